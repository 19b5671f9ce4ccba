"""A forgetting student: any student, partly reset to its initial weights every few steps.

TeachMyAgent's "forgetting student" stress test (Romac et al., ICML 2021)
resets the learner now and then, so a teacher must notice that skills it
had taught are gone and teach them again; a teacher that only chases
progress on what is still being learned, or that decides once and for all
what is mastered, falls behind. Here the reset is partial and without
randomness: after every ``every``-th call to ``train`` the weights move a
``fraction`` of the way back to the ones the student started the episode
with (``w <- (1 - fraction) w + fraction w_init``), before the step's
evaluation, so the teacher sees the loss in that step's observation. The
optimizer state is kept, as a reset of the network alone would keep it.

It wraps the student rather than changing it, so it works for every
student class (the ``tiny_forgetting`` student of the registry is the tiny
student wrapped) and needs nothing from the student but ``model`` (a torch
module, :class:`HasTorchModel`) and the :class:`~teachgym.students.Student`
protocol. The count of
``train`` calls is saved next to the student's own checkpoint, so a resumed
run forgets at the same steps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from pydantic import Field

from teachgym.options import derive, takes
from teachgym.students.base import (
    BatchesEvaluation,
    Closable,
    HasHorizon,
    ReportsPerf,
    ScoresOwnShards,
)
from teachgym.students.tiny import TinyOptions, tiny_student_for_task
from teachgym.types import Example

_STATE = "forgetting.json"


@runtime_checkable
class HasTorchModel(Protocol):
    """A student whose weights are one torch module, ``model``: all that forgetting needs
    besides the ``Student`` protocol (it keeps the module's initial parameters and moves
    the current ones back towards them)."""

    model: torch.nn.Module


#: The optional student protocols, with their members, that the wrapper shows exactly
#: when the wrapped student offers them.
CAPABILITIES: tuple[tuple[type, tuple[str, ...]], ...] = (
    (HasHorizon, ("set_horizon",)),
    (ScoresOwnShards, ("predict_scored",)),
    (Closable, ("close",)),
    (ReportsPerf, ("take_perf",)),
    (BatchesEvaluation, ("eval_batch_size",)),
)


class ForgettingStudent:
    """``student`` with a partial reset after every ``every``-th ``train`` call."""

    def __init__(self, student: Any, *, every: int, fraction: float) -> None:
        """``every`` >= 1 and ``fraction`` in (0, 1], as :data:`ForgettingOptions` checks."""
        if not (isinstance(student, HasTorchModel) and isinstance(student.model, torch.nn.Module)):
            raise ValueError(
                f"a forgetting student needs a student with a torch `model`; "
                f"{type(student).__name__} has none"
            )
        model = student.model
        self.student = student
        self.every = every
        self.fraction = float(fraction)
        self._initial = {k: v.detach().clone() for k, v in model.named_parameters()}
        self.trains = 0
        # The wrapped student's optional capabilities, bound on the instance: from Python
        # 3.12 on, isinstance() with a runtime Protocol looks attributes up statically and
        # does not see what __getattr__ would forward, so a forgetting student would lose
        # HasHorizon (the schedule's cool-down), ReportsPerf and the rest.
        for protocol, members in CAPABILITIES:
            if isinstance(student, protocol):
                for name in members:
                    setattr(self, name, getattr(student, name))

    def train(self, examples: Sequence[Example]) -> dict[str, Any]:
        metrics = self.student.train(examples)
        self.trains += 1
        if self.trains % self.every == 0:
            self.forget()
        return metrics

    def forget(self) -> None:
        """Move every weight ``fraction`` of the way back to its start.

        Over ``named_parameters``, which lists a tensor shared by two modules (tied
        input and output embeddings) once, so no weight is moved twice.
        """
        with torch.no_grad():
            for name, value in self.student.model.named_parameters():
                value.lerp_(self._initial[name].to(value.device, value.dtype), self.fraction)

    def reset(self) -> None:
        self.student.reset()
        self.trains = 0

    def save(self, path: str | Path) -> None:
        self.student.save(path)
        (Path(path) / _STATE).write_text(json.dumps({"trains": self.trains}))

    def load(self, path: str | Path) -> None:
        self.student.load(path)
        state = Path(path) / _STATE
        self.trains = int(json.loads(state.read_text())["trains"]) if state.exists() else 0

    def __getattr__(self, name: str) -> Any:
        # predict, set_horizon, max_new_tokens, ...: the wrapped student's own.
        if name == "student":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.student, name)


#: ``student: tiny_forgetting``: the tiny student's options and how it forgets.
ForgettingOptions = derive(
    "ForgettingOptions",
    (TinyOptions,),
    "Options of the ``tiny_forgetting`` student: the tiny student's, and how it forgets.",
    fields={
        "forget_every": (
            int,
            Field(default=4, ge=1, description="train calls between two partial resets"),
        ),
        "forget_fraction": (
            float,
            Field(default=0.5, gt=0.0, le=1.0, description="how far each reset goes back, 0..1"),
        ),
    },
)


@takes(ForgettingOptions)
def forgetting_tiny_student(
    task: Any, seed: int = 0, *, forget_every: int, forget_fraction: float, **kwargs: Any
) -> ForgettingStudent:
    """Registry factory for ``student: tiny_forgetting``: the tiny student, forgetting."""
    student = tiny_student_for_task(task, seed=seed, **kwargs)
    return ForgettingStudent(student, every=forget_every, fraction=forget_fraction)
