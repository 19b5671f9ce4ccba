"""The generator protocol: turns a teacher's plan into training examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    ``max_examples`` is a hard cap: examples beyond it are dropped by the env.
    """

    step: int
    rng: np.random.Generator
    max_examples: int
    skills: Sequence[str]
    task: Any
    report: EvalReport | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """Makes examples for a plan.

    Returns the examples and a mapping ``reason -> count`` of what the
    generator itself discarded (unparseable output, failed verification, ...).
    A generator must not raise for a bad plan it can partly serve; it reports
    what it could not make under ``rejected`` so the loop keeps going.
    """

    name: str

    def generate(
        self, plan: Plan, context: GenerationContext
    ) -> tuple[list[Example], Mapping[str, int]]: ...
