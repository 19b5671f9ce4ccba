"""The procedural generator: exact examples from the task's own sampler.

It is the default data engine because its answers are correct by construction,
which isolates what the teacher controls (which skills, how much) from data
quality. It serves all three plan kinds; a free-text plan is read as lines that
pair a skill with a count (``add/carry: 300``), which is what an LLM teacher is
prompted to write for this generator (the format's writer and reader are in
:mod:`teachgym.text_formats`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from teachgym.agents.generators.base import GenerationContext, Plan
from teachgym.envs.tasks.base import Task, TaskCapabilities
from teachgym.options import Options, takes
from teachgym.text_formats import parse_text_plan as parse_text_plan
from teachgym.types import (
    Allocation,
    Example,
    Problem,
    Provenance,
    TextPlan,
    TreeAction,
    normalize_prompt,
)


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
