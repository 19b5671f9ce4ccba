"""The generator protocol: turns a teacher's plan into training examples."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from teachgym.types import Allocation, EvalReport, Example, TextPlan, TreeAction

Plan = Allocation | TextPlan | TreeAction


@dataclass
class GenerationContext:
    """What a generator may use besides the plan.

    ``rng`` is derived from the episode seed and the step number, so the same
    plan at the same step always yields the same data (and a resumed run
    regenerates exactly what the interrupted one would have).
    ``max_examples`` is the most examples the step can use; a generator makes
    no more than that (see :class:`Generator`).
    """

    step: int
    rng: np.random.Generator
    max_examples: int
    skills: Sequence[str]
    task: Any
    report: EvalReport | None = None
    #: Normalized prompts (:func:`~teachgym.types.normalize_prompt`) the env
    #: would reject: evaluation items, prompts already accepted this step (and
    #: this episode, with ``dedup="episode"``). A generator that samples from
    #: a pool can skip them instead of making examples that are thrown away.
    exclude: Collection[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """Makes examples for a plan.

    Returns the examples and a mapping ``reason -> count`` of what the
    generator itself discarded (unparseable output, failed verification, ...).
    A generator must not raise for a bad plan it can partly serve; it reports
    what it could not make under ``rejected`` so the loop keeps going.

    ``generate`` honours ``context.max_examples``: it returns at most that
    many examples, and does no more work than that number calls for, whatever
    the plan asks. The env clamps count plans (``Allocation``) before calling,
    but a free-text plan is read only by the generator, so only the generator
    can bound it. (Examples past the cap would be dropped by the env as
    ``over_budget`` anyway; the rule is about not making them.)

    A generator may also name ``shortfall_reasons``: the reasons it uses for
    examples it was asked for and could not make (``space_exhausted``), as
    opposed to examples it made and threw away. The env asks again for a
    count plan's missing examples, and counts a shortfall from the last round
    only (see :class:`~teachgym.envs.base.StepData`).
    """

    name: str

    def generate(
        self, plan: Plan, context: GenerationContext
    ) -> tuple[list[Example], Mapping[str, int]]: ...


@runtime_checkable
class ReportsStats(Protocol):
    """``take_stats()``: the generator's counters since the last call (an LLM
    generator's requests, cache hits, failures and tokens), reported by the env in
    ``info["llm"]["generator"]`` after every step."""

    def take_stats(self) -> dict[str, Any]: ...


@runtime_checkable
class ReportsShortfall(Protocol):
    """``shortfall_reasons``: the rejection reasons that count examples the generator
    was asked for and could not make (``space_exhausted``), as opposed to examples it
    made and threw away; the env counts those from a step's last round only."""

    shortfall_reasons: frozenset[str]
