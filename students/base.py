"""The student protocol: the one seam between the environment and a model.

The environment calls the five methods of :class:`Student`, and the optional
ones of the small protocols below when a student offers them (read once, when
the env is built), so a student can live in this process, in a Ray actor, or
behind a server without the loop changing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from teachgym.types import Example, Problem


@runtime_checkable
class Student(Protocol):
    """A trainable model that answers problems.

    ``train`` returns a metrics dict with at least ``loss``, ``steps`` and
    ``tokens``. ``predict`` returns raw completions; the task, not the student,
    decides what counts as correct, so one student serves every task.
    """

    def train(self, examples: Sequence[Example]) -> dict[str, float]: ...

    def predict(self, problems: Sequence[Problem]) -> list[str]: ...

    def save(self, path: str | Path) -> None: ...

    def load(self, path: str | Path) -> None: ...

    def reset(self) -> None: ...


@runtime_checkable
class HasHorizon(Protocol):
    """``set_horizon(examples)``: the most examples an episode can train on, told once by
    the env, for a learning rate that cools down by the end of the episode."""

    def set_horizon(self, examples: int | None) -> None: ...


@runtime_checkable
class ScoresOwnShards(Protocol):
    """``predict_scored(problems)``: completions and their scores made where the student
    runs (Ray evaluation workers score their own shards: sandboxes on their CPUs)."""

    def predict_scored(self, problems: Sequence[Problem]) -> tuple[list[str], list[bool]]: ...


@runtime_checkable
class Closable(Protocol):
    """``close()``: release what the student holds (an evaluation engine, temp files)."""

    def close(self) -> None: ...


@runtime_checkable
class ReportsPerf(Protocol):
    """``take_perf()``: measurements since the last call (tokens per second, peak
    memory), which vary run to run and so go to ``perf.jsonl``, not ``steps.jsonl``."""

    def take_perf(self) -> dict[str, Any]: ...


@runtime_checkable
class BatchesEvaluation(Protocol):
    """``eval_batch_size``: how many problems the student decodes in one batch. The proxy
    cuts evaluation shards on these boundaries, so that every batch is one a single
    worker would decode and sharded predictions equal one worker's."""

    eval_batch_size: int
