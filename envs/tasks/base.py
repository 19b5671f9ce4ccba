"""The task protocol: what the student must learn and how it is scored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from teachgym.envs.skills import SkillTree
from teachgym.types import Problem

Split = Literal["val", "test"]


@runtime_checkable
class Task(Protocol):
    """A skill-labelled evaluation set with a scorer.

    ``problems("val")`` is what the teacher is shown every step;
    ``problems("test")`` is reported only at the end of an episode.
    """

    name: str

    @property
    def skills(self) -> SkillTree: ...

    def problems(self, split: Split) -> list[Problem]: ...

    def score(self, problem: Problem, output: str) -> bool: ...


@runtime_checkable
class ProceduralTask(Task, Protocol):
    """A task that can also make fresh, exactly-answered training problems.

    The ``procedural`` generator needs this; tasks with a fixed pool of data
    (GSM8K, HumanEval) do not provide it and need an LLM generator instead.
    """

    alphabet: str

    def sample(self, skill: str, n: int, rng: np.random.Generator) -> Sequence[Problem]: ...
