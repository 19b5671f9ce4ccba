"""The student protocol: the one seam between the environment and a model.

The environment only ever calls these five methods, so a student can live in
this process, in a Ray actor, or behind a server without the loop changing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

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
