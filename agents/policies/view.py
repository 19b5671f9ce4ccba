"""What a teacher sees of its env: :class:`TeacherView`.

A teacher is built as ``Teacher(env=view, seed=seed, **teacher_kwargs)``
with a view, not the env: the skills, the spaces, the budget and the config
are there, and the task's *train side* (its skills, the validation problems
it is scored on every step, fresh samples, format descriptions), never the
test split, which is reported only at the end of an episode. Before the view,
only convention kept a teacher from tuning on test problems.

The view keeps the names a teacher already used, so ``env.unwrapped.skills``
in a user's teacher still works (``unwrapped`` is the view itself).
"""

from __future__ import annotations

from typing import Any

from teachgym.config import ExperimentConfig
from teachgym.types import Problem

__all__ = ["TaskView", "TeacherView"]


class TaskView:
    """The train side of a task: anything but ``problems("test")``.

    ``problems("val")`` is allowed: the validation split is what every
    observation reports on. Besides it, the view offers the task's public
    capabilities (:data:`VISIBLE`: its name and skills, ``sample``,
    ``format_description``, ``check``, ...), and nothing else, so no
    attribute of a task's own reaches the test split through it.
    """

    #: The task attributes a teacher may read (see teachgym.envs.tasks.base).
    VISIBLE = frozenset(
        {
            "name",
            "skills",
            "leaf_skills",
            "alphabet",
            "sample",
            "format_description",
            "check",
            "skill_of",
            "score",
            "answers_agree",
            "max_answer_length",
            "stop_strings",
        }
    )

    def __init__(self, task: Any) -> None:
        self._task = task

    def problems(self, split: str) -> list[Problem]:
        if split != "val":
            raise PermissionError(
                f"a teacher sees the validation split only, not {split!r}: the test split is "
                f"reported at the end of the episode so that no teacher can tune on it"
            )
        return list(self._task.problems("val"))

    def __getattr__(self, name: str) -> Any:
        if name not in self.VISIBLE:
            raise AttributeError(
                f"a teacher's view of the task has no {name!r} (it offers "
                f"{', '.join(sorted(self.VISIBLE))} and problems('val'))"
            )
        return getattr(self._task, name)

    def __repr__(self) -> str:
        return f"TaskView({self._task.name!r})"


class TeacherView:
    """The env as a teacher sees it (see the module docstring).

    Attributes: ``kind`` (``skill_list``, ``open_ended`` or ``skill_tree``),
    ``skills`` (the current leaf skills, the order of every per-skill vector),
    ``observation_space``, ``action_space``, ``spec``, ``config`` (the
    experiment config), ``budget_left``, ``step_cap``, ``horizon`` and
    ``task`` (a :class:`TaskView`).
    """

    def __init__(self, env: Any) -> None:
        self._env = getattr(env, "unwrapped", env)

    @property
    def unwrapped(self) -> TeacherView:
        """The view itself, so ``env.unwrapped.skills`` reads as it does on an env."""
        return self

    @property
    def kind(self) -> str:
        return str(self._env.kind)

    @property
    def skills(self) -> list[str]:
        return list(self._env.skills)

    @property
    def observation_space(self) -> Any:
        return self._env.observation_space

    @property
    def action_space(self) -> Any:
        return self._env.action_space

    @property
    def spec(self) -> Any:
        return self._env.spec

    @property
    def config(self) -> ExperimentConfig:
        return self._env.config.model_copy(deep=True)

    @property
    def budget_left(self) -> int:
        return int(self._env.budget_left)

    @property
    def step_cap(self) -> int:
        return int(self._env.step_cap)

    @property
    def horizon(self) -> int:
        return int(self._env.horizon)

    @property
    def task(self) -> TaskView:
        return TaskView(self._env.task)

    def __repr__(self) -> str:
        return f"TeacherView({type(self._env).__name__})"
