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
from teachgym.types import (
    Allocation,
    Example,
    Problem,
    Provenance,
    TextPlan,
    TreeAction,
    normalize_prompt,
)

# A skill name starts with a letter, so "50 x borrow" is not read as skill "5".
_NAME = r"[A-Za-z][A-Za-z0-9_./-]*"
_LINE = re.compile(rf"({_NAME})\s*[:=x*]?\s*(\d+)|(\d+)\s*[:x*]?\s*({_NAME})")


def parse_text_plan(text: str, skills: Sequence[str]) -> Allocation:
    """Read ``skill: count`` pairs (either order) from free text.

    A skill may be named by its full path or by a unique last segment. Counts
    for the same skill add up; unknown names are ignored.

    >>> skills = ["add/carry", "sub/borrow"]
    >>> parse_text_plan("Focus on carries.\\nadd/carry: 300\\n50 x borrow", skills)
    Allocation(counts={'add/carry': 300, 'sub/borrow': 50})
    """
    by_name: dict[str, str] = {s: s for s in skills}
    tails = Counter(s.rsplit("/", 1)[-1] for s in skills)
    for s in skills:
        tail = s.rsplit("/", 1)[-1]
        if tails[tail] == 1:
            by_name.setdefault(tail, s)
    counts: Counter[str] = Counter()
    for m in _LINE.finditer(text):
        name, num = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        skill = by_name.get(name)
        if skill is not None:
            counts[skill] += int(num)
    return Allocation(counts=dict(counts))


class ProceduralGenerator:
    """Samples problems from a :class:`~teachgym.envs.tasks.base.ProceduralTask`.

    A skill the task cannot sample (for example a subskill that a SkillTree
    teacher invented) is served from its nearest ancestor that the task knows,
    labelled with the requested skill; with no such ancestor its examples are
    counted under ``rejected["no_procedure"]`` (see :meth:`_sources`).
    """

    name = "procedural"

    def __init__(self, task: object, seed: int = 0) -> None:
        if not hasattr(task, "sample"):
            raise TypeError(
                f"the procedural generator needs a task with a sample() method; "
                f"{type(task).__name__} has none (use an LLM generator)"
            )
        self.task = task
        self.seed = seed

    def _sources(self, skill: str, known: Sequence[str]) -> tuple[list[str], bool]:
        """The task skills that serve ``skill``, and whether examples keep ``skill`` as label.

        A known leaf serves itself. An inner node of the task's tree (``add``)
        is spread over the leaves below it, each example labelled with its own
        leaf. A skill the task does not know (``add/carry/three_carries``,
        invented by a SkillTree teacher) is served by its nearest ancestor
        that has a procedure, a leaf or an inner node, and keeps the requested
        label, so the student's data for the new subskill is counted under it.
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
            batch = self.task.sample(skill, n - len(out), context.rng)
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
        known = list(getattr(self.task, "leaf_skills", context.skills))
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
