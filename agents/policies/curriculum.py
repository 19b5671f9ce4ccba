"""An easy-first curriculum: learning progress, opened up one difficulty level at a time.

Learning progress (TSCL) only sees a skill's progress once the student makes
some. Before that, on a task whose skills share a hard first step, every skill
sits near zero and a progress teacher spreads data over all of them. The hard
skills then slow the easy ones down: on the default arithmetic task, 3-digit
operands put the digits the student must combine at other positions than
2-digit ones, and a student taught all seven skills from the start leaves its
loss plateau later than one taught the 2-digit skills first (README, "Measured").

So this teacher starts with the easiest skills and opens the next level when
the student has got somewhere, the "competence-based" curriculum of Platanios
et al. (2019) with a mastery gate instead of a fixed schedule. Difficulty is
measured the way that paper does when nothing else is known: by length, here
the mean prompt length of a skill's validation questions (only the questions,
never the answers). Within the open skills it allocates exactly like
:class:`~teachgym.agents.policies.learning_progress.LearningProgressTeacher`,
and once every level is open it *is* that teacher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from teachgym.agents.policies.learning_progress import (
    LearningProgressOptions,
    LearningProgressTeacher,
)
from teachgym.options import takes


def length_levels(
    skills: Sequence[str], lengths: Mapping[str, float], tolerance: float = 0.1
) -> list[list[str]]:
    """Group skills into difficulty levels by a length, shortest first.

    A skill joins the current level while its length is within ``tolerance`` (relative) of
    the level's shortest skill; otherwise it starts a new level. Ties keep the skill order.

    >>> length_levels(["a3", "a2", "b2", "c3"], {"a3": 8.0, "a2": 6.0, "b2": 6.2, "c3": 8.0})
    [['a2', 'b2'], ['a3', 'c3']]
    """
    order = sorted(skills, key=lambda s: lengths[s])  # a stable sort: ties keep skill order
    levels: list[list[str]] = []
    for skill in order:
        if levels and lengths[skill] <= lengths[levels[-1][0]] * (1.0 + tolerance):
            levels[-1].append(skill)
        else:
            levels.append([skill])
    return levels


class CurriculumOptions(LearningProgressOptions):
    """Options of :class:`CurriculumTeacher` (``curriculum``): learning progress's and its own."""

    levels: list[list[str]] | None = Field(
        default=None,
        description="skill names by level, easiest first, each skill once; null: measured "
        "from the validation prompts' lengths",
    )
    gate: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="mean accuracy of the open skills that opens the next level",
    )
    patience: int = Field(
        default=10, ge=1, description="steps at one level after which the next opens anyway"
    )
    tolerance: float = Field(
        default=0.1, ge=0.0, description="relative length difference within one level"
    )


class CurriculumTeacher(LearningProgressTeacher):
    """Learning progress on the easiest skills first; harder levels open as the student improves.

    Skills are grouped into ``levels`` (by default from the task's validation prompts, see
    :func:`length_levels`). Only the open levels get data. The next level opens when the
    mean validation accuracy of the open skills reaches ``gate``, or after ``patience``
    steps at the current level, so a level that is too hard to pass cannot block the rest
    of the episode. One level opens per step at most; all levels close again at episode end.

    Why the defaults: ``gate=0.5`` opens the 3-digit skills of the default task once the
    2-digit ones are half learned, which is when the student has found where the digits
    are; waiting for mastery would leave the hard skills too little of the budget.
    ``patience=10`` is a third of the default episode.

    Args:
        levels: explicit levels (lists of skill names, easiest first, covering every skill
            once); ``None`` measures them from ``env.unwrapped.task``.
        gate: mean accuracy of the open skills that opens the next level.
        patience: steps at one level after which the next opens anyway.
        tolerance: relative length difference that still counts as the same level.
        **kwargs: passed to :class:`LearningProgressTeacher` (``window``, ``temperature``, ...).

    >>> from types import SimpleNamespace
    >>> env = SimpleNamespace(unwrapped=SimpleNamespace(skills=["easy", "hard"]))
    >>> teacher = CurriculumTeacher(env, levels=[["easy"], ["hard"]])
    >>> teacher.act({"accuracy": [0.0, 0.0]}, {}).tolist()
    [1.0, 0.0]
    >>> teacher.act({"accuracy": [0.6, 0.0]}, {}).tolist()[1] > 0
    True
    """

    @takes(CurriculumOptions)
    def __init__(
        self,
        env: Any,
        seed: int = 0,
        *,
        levels: Sequence[Sequence[str]] | None,
        gate: float,
        patience: int,
        tolerance: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(env, seed, **kwargs)
        self.gate, self.patience, self.tolerance = gate, patience, tolerance
        if levels is None:
            levels = length_levels(self.skills, self._prompt_lengths(env), self.tolerance)
        self.levels = self._check_levels(levels)
        self.level = 0  # index of the hardest open level
        self.steps_at_level = 0

    def _prompt_lengths(self, env: Any) -> dict[str, float]:
        task = getattr(getattr(env, "unwrapped", env), "task", None)
        if task is None or not hasattr(task, "problems"):
            raise ValueError(
                "CurriculumTeacher needs levels=[[...], ...] or an env with a task "
                "(env.unwrapped.task) whose validation prompts measure difficulty"
            )
        lengths: dict[str, list[int]] = {s: [] for s in self.skills}
        for problem in task.problems("val"):
            if problem.skill in lengths:
                lengths[problem.skill].append(len(problem.prompt))
        missing = [s for s, v in lengths.items() if not v]
        if missing:
            raise ValueError(f"no validation problems to measure the difficulty of {missing}")
        return {s: float(np.mean(v)) for s, v in lengths.items()}

    def _check_levels(self, levels: Sequence[Sequence[str]]) -> list[list[str]]:
        flat = [str(s) for level in levels for s in level]
        if sorted(flat) != sorted(self.skills) or any(len(level) == 0 for level in levels):
            raise ValueError(
                f"levels must be non-empty lists that cover each skill exactly once; "
                f"got {[list(level) for level in levels]!r} for skills {self.skills}"
            )
        return [[str(s) for s in level] for level in levels]

    def open_mask(self) -> np.ndarray:
        """True for the skills in the open levels."""
        open_skills = {s for level in self.levels[: self.level + 1] for s in level}
        return np.array([s in open_skills for s in self.skills])

    def shares(self) -> np.ndarray:
        mask = self.open_mask()
        shares = np.where(mask, super().shares(), 0.0)
        return shares / shares.sum()

    def act(self, observation: Any, info: Mapping[str, Any]) -> np.ndarray:
        self._advance(self._accuracy(observation))
        return super().act(observation, info)

    def _advance(self, accuracy: np.ndarray) -> None:
        if self.level + 1 >= len(self.levels):
            return
        self.steps_at_level += 1
        open_acc = accuracy[self.open_mask()]
        measured = open_acc[np.isfinite(open_acc)]
        ready = measured.size > 0 and float(measured.mean()) >= self.gate
        # steps_at_level counts this act; patience steps of training happened before it.
        if ready or self.steps_at_level > self.patience:
            self.level += 1
            self.steps_at_level = 0

    def update(
        self,
        observation: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: Mapping[str, Any],
    ) -> None:
        super().update(observation, reward, terminated, truncated, info)
        if terminated or truncated:
            self.level, self.steps_at_level = 0, 0

    def _extra_state(self) -> dict[str, Any]:
        return super()._extra_state() | {
            "level": self.level,
            "steps_at_level": self.steps_at_level,
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        level, steps = state.get("level"), state.get("steps_at_level")
        if not isinstance(level, int) or not 0 <= level < len(self.levels):
            raise ValueError(f"state['extra']['level'] must be 0..{len(self.levels) - 1}")
        if not isinstance(steps, int) or steps < 0:
            raise ValueError("state['extra']['steps_at_level'] must be a non-negative int")
        self.level, self.steps_at_level = level, steps
