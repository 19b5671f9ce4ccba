"""``teachgym/SkillList-v0``: the teacher allocates data over a fixed skill list."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from teachgym.config import ExperimentConfig
from teachgym.envs.base import Parts, TeacherEnv
from teachgym.types import Allocation


class SkillListEnv(TeacherEnv):
    """Allocate training examples across K known skills.

    ## Description

    Each step the teacher splits ``examples_per_step`` new training examples
    across the task's leaf skills. The generator makes them, the environment
    drops duplicates and any example equal to a validation or test problem, the
    student trains on the rest, and is re-evaluated on the validation split.
    This is the skill-list setting of DataEnvGym with a real gymnasium API, so
    any RL library can learn the allocation policy.

    ## Action Space

    ``Box(0, 1, (K,), float32)``: one non-negative weight per skill, in the
    order of ``env.unwrapped.skills``. Weights are normalised, so only their
    ratios matter; an all-zero vector spreads evenly. An
    :class:`~teachgym.types.Allocation` with explicit counts is also accepted
    (clamped like any plan, see Budget).

    ## Observation Space

    ``Dict`` of float32 Boxes:

    | Key             | Shape | Min | Max    | Meaning                                 |
    |-----------------|-------|-----|--------|-----------------------------------------|
    | `accuracy`      | (K,)  | 0   | 1      | validation accuracy of each skill       |
    | `examples_used` | (K,)  | 0   | budget | examples trained on so far (paid for)   |
    | `budget_left`   | (1,)  | 0   | budget | budget minus the sum of `examples_used` |

    ## Rewards

    The change in mean per-skill validation accuracy caused by the step, minus
    ``cost_per_example`` times the number of accepted examples.

    ## Budget

    The teacher pays for the examples the student trains on, nothing else:
    ``budget_left`` falls by ``info["examples_accepted"]``. A plan is clamped
    to the step cap, ``min(examples_per_step, budget_left)``, before the
    generator runs (proportions kept), so no plan makes more than a step can
    use. Examples the filter drops (duplicates, evaluation items, bad
    characters) cost nothing; ``info["examples_by_skill"]`` shows per skill
    how many were made, accepted and rejected, and why.

    ## Starting State

    ``reset`` restores the student's base weights, clears all data and
    evaluates once, so the first observation is the untrained student.

    ## Episode End

    Terminated when the data budget is spent; truncated after ``max_steps``.
    The last step's ``info`` holds ``test_accuracy`` (test accuracy is never
    reported before the end, so a teacher cannot tune on it).

    ## Arguments

    Every key of :class:`~teachgym.config.ExperimentConfig` (``budget``,
    ``examples_per_step``, ``student_kwargs``, ...) can be passed to
    ``gymnasium.make``; ``render_mode="ansi"`` renders a text table.

    ## Examples

    >>> import gymnasium as gym
    >>> import teachgym
    >>> env = gym.make("teachgym/SkillList-v0", budget=40, examples_per_step=20,
    ...                task_kwargs={"val_per_skill": 4, "test_per_skill": 4})
    >>> obs, info = env.reset(seed=0)
    >>> sorted(obs), obs["accuracy"].shape == (len(env.unwrapped.skills),)
    (['accuracy', 'budget_left', 'examples_used'], True)
    >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    >>> info["examples_accepted"] <= 20, terminated
    (True, False)
    """

    kind = "skill_list"

    def __init__(self, config: ExperimentConfig, parts: Parts, **kwargs: Any) -> None:
        super().__init__(config, parts, **kwargs)
        k = len(self.skills)
        budget = float(self.config.budget)
        self.action_space = spaces.Box(0.0, 1.0, shape=(k,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "accuracy": spaces.Box(0.0, 1.0, shape=(k,), dtype=np.float32),
                "examples_used": spaces.Box(0.0, budget, shape=(k,), dtype=np.float32),
                "budget_left": spaces.Box(0.0, budget, shape=(1,), dtype=np.float32),
            }
        )

    def _read_action(self, action: Any) -> Allocation:
        cap = min(self.config.examples_per_step, self.budget_left)
        if isinstance(action, Allocation):
            unknown = sorted(set(action.counts) - set(self.skills))
            if unknown:
                raise ValueError(f"allocation names unknown skills {unknown}; known: {self.skills}")
            return action
        try:
            weights = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"action must be an array of {len(self.skills)} weights or an Allocation, "
                f"got {type(action).__name__}"
            ) from err
        if weights.shape != (len(self.skills),):
            raise ValueError(
                f"action must have shape ({len(self.skills)},) (one weight per skill), "
                f"got shape {weights.shape}"
            )
        return Allocation.from_weights(self.skills, weights, cap)

    def observe(self) -> dict[str, np.ndarray]:
        acc = self.report.skill_accuracy()
        return {
            "accuracy": np.array([acc.get(s, 0.0) for s in self.skills], dtype=np.float32),
            "examples_used": np.array(
                [self._used.get(s, 0) for s in self.skills], dtype=np.float32
            ),
            "budget_left": np.array([self.budget_left], dtype=np.float32),
        }
