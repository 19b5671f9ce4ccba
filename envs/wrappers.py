"""Wrappers that adapt teachgym envs to generic RL libraries."""

from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from teachgym.config import ENV_KINDS
from teachgym.envs.base import TeacherEnv


class FlatSkillList(gym.ObservationWrapper):
    """SkillList's Dict observation as one float32 Box in [0, 1].

    Stable-Baselines3 and most RL code want a single Box. The layout is
    ``[accuracy (K), examples_used / budget (K), budget_left / budget (1)]``:
    counts are divided by the budget so every feature lies in [0, 1], which
    keeps a policy network's inputs on one scale.

    >>> import gymnasium as gym
    >>> import teachgym
    >>> env = FlatSkillList(gym.make("teachgym/SkillList-v0", budget=40, examples_per_step=20,
    ...                     task_kwargs={"val_per_skill": 4, "test_per_skill": 4}))
    >>> obs, _ = env.reset(seed=0)
    >>> obs.shape, obs.dtype.name, float(obs[-1])
    ((15,), 'float32', 1.0)
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        inner = env.observation_space
        if not isinstance(inner, spaces.Dict) or set(inner.spaces) != {
            "accuracy",
            "examples_used",
            "budget_left",
        }:
            raise TypeError(f"FlatSkillList wraps {ENV_KINDS['skill_list']} only")
        k = len(cast(TeacherEnv, env.unwrapped).skills)
        self._budget = float(cast(TeacherEnv, env.unwrapped).config.budget)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(2 * k + 1,), dtype=np.float32)

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        return np.concatenate(
            [
                observation["accuracy"],
                observation["examples_used"] / self._budget,
                observation["budget_left"] / self._budget,
            ]
        ).astype(np.float32)
