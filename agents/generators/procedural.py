"""The procedural generator: exact examples from the task's own sampler.

It is the default data engine because its answers are correct by construction,
which isolates what the teacher controls (which skills, how much) from data
quality. It serves all three plan kinds; a free-text plan is read as lines that
pair a skill with a count (``add/carry: 300``), which is what an LLM teacher is
prompted to write for this generator.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

from teachgym.agents.generators.base import GenerationContext, Plan
from teachgym.envs.tasks.base import Task, TaskCapabilities
from teachgym.options import Options, takes
from teachgym.types import (
    Allocation,
    Example,
    Problem,
    Provenance,
    TextPlan,
    TreeAction,
    normalize_prompt,
)

# A skill name starts with a letter, so "50 x borrow" is not read as skill "5"; it
# is a whole word (never the tail or head of a longer token), so "add/carry300"
# is not read as skill "add/carry3" with count 00.
_NAME = r"(?<![\w./-])[A-Za-z][\w./-]*(?![\w./-])"
# A count: digits, or digits grouped by commas ("1,000"); not part of a longer token.
_COUNT = r"(?<![\w./,-])(\d{1,3}(?:,\d{3})+|\d+)(?![\w,]*\d)(?![ \t]*%)"
# What may stand between a name and its count, on one line: spaces, ":", "=", "*",
# "x" or the multiplication sign "×", hyphens and dashes ("-", "–", "—"), arrows,
# an opening parenthesis, markdown emphasis.
_SEP = r"[ \t:=*×xX–—\-(>→_]*"
# Words an LLM puts between a count and the skill: "300 examples of add/carry".
_WORDS = (
    r"(?:(?:new|more|extra|additional)[ \t]+)?"
    r"(?:examples?|problems?|items?|questions?|exercises?)"
    r"(?:[ \t]+(?:of|for|on|in|with|about))?[ \t:]*"
)
_NAME_FIRST = re.compile(rf"({_NAME}){_SEP}{_COUNT}")
_COUNT_FIRST = re.compile(rf"{_COUNT}{_SEP}(?:{_WORDS})?({_NAME})")


def parse_text_plan(text: str, skills: Sequence[str]) -> Allocation:
    """Read ``skill: count`` pairs (either order) from free text.

    A skill may be named by its full path or by a unique last segment, in any
    letter case. Counts for the same skill add up; unknown names are ignored.
    What an LLM writes around the pairs is tolerated: list bullets (``-``,
    ``*``, ``•``, ``1.``), the separators ``:``, ``=``, ``x``, ``×``, ``-``,
    ``–`` and ``—``, markdown emphasis, a parenthesis, counts grouped with
    commas (``1,000``), and words such as ``examples of``. A pair never spans
    two lines. When a count could belong to the name before it or the name
    after it (``5 sub/borrow 2``), a name followed by its own count keeps it.

    >>> skills = ["add/carry", "sub/borrow"]
    >>> parse_text_plan("Focus on carries.\\nadd/carry: 300\\n50 x borrow", skills)
    Allocation(counts={'add/carry': 300, 'sub/borrow': 50})
    >>> parse_text_plan("• add/carry × 300\\n– 1,000 examples of sub/borrow", skills)
    Allocation(counts={'add/carry': 300, 'sub/borrow': 1000})
    >>> parse_text_plan("- **Carry** – 40 examples\\n* 20 × borrow", skills)
    Allocation(counts={'add/carry': 40, 'sub/borrow': 20})
    """
    by_name: dict[str, str] = {s.lower(): s for s in skills}
    tails = Counter(s.rsplit("/", 1)[-1].lower() for s in skills)
    for s in skills:
        tail = s.rsplit("/", 1)[-1].lower()
        if tails[tail] == 1:
            by_name.setdefault(tail, s)

    def lookup(name: str) -> str | None:
        return by_name.get(name.rstrip("./-_").lower())

    counts: Counter[str] = Counter()
    for line in text.splitlines():
        pos = 0
        while pos < len(line):
            a = _NAME_FIRST.search(line, pos)
            b = _COUNT_FIRST.search(line, pos)
            if b is not None and (a is None or b.start() < a.start()):
                # "5 sub/borrow 2": the name has a count of its own after it; take that.
                after = _NAME_FIRST.match(line, b.start(2))
                skill = lookup(b.group(2))
                if skill is not None and not (after is not None and lookup(after.group(1))):
                    counts[skill] += int(b.group(1).replace(",", ""))
                    pos = b.end()
                else:
                    pos = b.start() + 1
            elif a is not None:
                skill = lookup(a.group(1))
                if skill is not None:
                    counts[skill] += int(a.group(2).replace(",", ""))
                    pos = a.end()
                else:
                    # "Teach carries: 300 examples of add/carry": the count is the next pair's.
                    pos = a.start() + 1
            else:
                break
    return Allocation(counts=dict(counts))


def source_skills(skill: str, known: Sequence[str]) -> tuple[list[str], bool]:
    """The task skills that serve ``skill``, and whether examples keep ``skill`` as label.

    A known leaf serves itself. An inner node of the task's tree (``add``)
    is spread over the leaves below it, each example labelled with its own
    leaf. A skill the task does not know (``add/carry/three_carries``,
    invented by a SkillTree teacher) is served by its nearest ancestor
    that has a procedure, a leaf or an inner node, and keeps the requested
    label, so the student's data for the new subskill is counted under it.
    The ``llm`` generator uses the same rule to pick the problems it shows
    as format examples for a skill.
    """
    if skill in known:
        return [skill], True
    below = [k for k in known if k.startswith(skill + "/")]
    if below:
        return below, False
    node = skill.rpartition("/")[0]
    while node:
        if node in known:
            return [node], True
        below = [k for k in known if k.startswith(node + "/")]
        if below:
            return below, True
        node = node.rpartition("/")[0]
    return [], True


class ProceduralOptions(Options):
    """The procedural generator takes no options: the task's sampler decides everything."""


class ProceduralGenerator:
    """Samples problems from a :class:`~teachgym.envs.tasks.base.ProceduralTask`.

    A skill the task cannot sample (for example a subskill that a SkillTree
    teacher invented) is served from its nearest ancestor that the task knows,
    labelled with the requested skill; with no such ancestor its examples are
    counted under ``rejected["no_procedure"]`` (see :func:`source_skills`).
    """

    name = "procedural"
    #: Reasons that count examples this generator could not make (not made-and-dropped
    #: ones): the env asks again for them, so it counts them from the last round only.
    shortfall_reasons = frozenset({"space_exhausted", "no_procedure"})
    #: What it needs of a task (checked by the assembly before anything is built).
    requires = ("sampler",)

    @takes(ProceduralOptions)
    def __init__(self, task: Task, seed: int = 0) -> None:
        self.caps = TaskCapabilities.of(task)
        self.sampler = self.caps.require("sampler", "the procedural generator (or use `llm`)")
        self.task = task
        self.seed = seed

    def _sources(self, skill: str, known: Sequence[str]) -> tuple[list[str], bool]:
        """See :func:`source_skills`."""
        return source_skills(skill, known)

    def plan_counts(self, plan: Plan, context: GenerationContext) -> tuple[dict[str, int], int]:
        """The per-skill counts to make, clamped to ``context.max_examples`` with their
        proportions kept, and how many plans were unreadable."""
        if isinstance(plan, Allocation):
            alloc, unreadable = plan, 0
        elif isinstance(plan, TreeAction):
            alloc, unreadable = Allocation(counts=dict(plan.allocation)), 0
        elif isinstance(plan, TextPlan):
            alloc = parse_text_plan(plan.text, list(context.skills))
            unreadable = int(alloc.total == 0)
        else:
            raise TypeError(f"unsupported plan type {type(plan).__name__}")
        return dict(alloc.clamped(max(0, context.max_examples)).counts), unreadable

    def _distinct(
        self, skill: str, n: int, context: GenerationContext, rejected: Counter[str]
    ) -> list[Problem]:
        """Up to ``n`` problems with distinct prompts, none in ``context.exclude``.

        The env drops repeated prompts within a step, so asking a small problem
        space (720 prompts for 2-digit x 1-digit) for more than it holds would
        only waste the step. Drawing distinct prompts here, and stopping when
        the space is exhausted, keeps a step's examples distinct; the shortfall
        is reported as ``rejected["space_exhausted"]`` (and, like every
        rejection, costs the teacher nothing).
        """
        out: list[Problem] = []
        seen: set[str] = set()
        exclude = context.exclude
        attempts = 0
        while len(out) < n and attempts < 4 * n + 64:
            batch = self.sampler.sample(skill, n - len(out), context.rng)
            attempts += len(batch)
            for p in batch:
                key = normalize_prompt(p.prompt)
                if key not in seen and key not in exclude and len(out) < n:
                    seen.add(key)
                    out.append(p)
        if len(out) < n:
            rejected["space_exhausted"] += n - len(out)
        return out

    def generate(
        self, plan: Plan, context: GenerationContext
    ) -> tuple[list[Example], Mapping[str, int]]:
        counts, unreadable = self.plan_counts(plan, context)
        rejected: Counter[str] = Counter()
        if unreadable:
            rejected["unparsed_plan"] += 1
        known = list(self.caps.leaf_skills or context.skills)
        source = Provenance(generator=self.name, seed=self.seed)
        out: list[Example] = []
        for skill, n in counts.items():
            if n <= 0:
                continue
            sources, keep_label = self._sources(skill, known)
            if not sources:
                rejected["no_procedure"] += n
                continue
            for i, leaf in enumerate(sources):
                share = n // len(sources) + (i < n % len(sources))
                out.extend(
                    Example(
                        prompt=p.prompt,
                        completion=p.answer,
                        skill=skill if keep_label else p.skill,
                        source=source,
                    )
                    for p in self._distinct(leaf, share, context, rejected)
                )
        return out, dict(rejected)
