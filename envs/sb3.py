"""A thin Stable-Baselines3 ``VecEnv`` over the population vector env (the ``rl`` extra).

Stable-Baselines3 resets a finished sub-env in the step that finishes it and
hands the final observation over in ``infos[i]["terminal_observation"]``;
that is gymnasium's ``SAME_STEP`` autoreset, so the adapter builds (or
requires) a vector env in that mode and only reshapes what it returns: the
vector info dict becomes one dict per sub-env, ``terminated | truncated``
becomes ``dones``, and ``TimeLimit.truncated`` marks truncations (SB3
bootstraps their value).

>>> from teachgym.envs.sb3 import SB3VecEnv  # doctest: +SKIP
>>> venv = SB3VecEnv.make(num_envs=4, budget=12000)  # doctest: +SKIP
>>> model = stable_baselines3.PPO("MultiInputPolicy", venv, n_steps=8)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from teachgym.envs.vector import SkillListVectorEnv

__all__ = ["SB3VecEnv", "unbatch_info"]


def unbatch_info(infos: dict[str, Any], index: int) -> dict[str, Any]:
    """Sub-env ``index``'s info out of gymnasium's vector info (the keys its ``_key``
    mask marks, nested dicts unbatched too)."""
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_") or not infos.get(f"_{key}", np.zeros(index + 1, bool))[index]:
            continue
        out[key] = unbatch_info(value, index) if isinstance(value, dict) else value[index]
    return out


class SB3VecEnv(VecEnv):
    """Stable-Baselines3's view of a :class:`~teachgym.envs.vector.SkillListVectorEnv`.

    ``venv`` must use ``SAME_STEP`` autoreset (:meth:`make` builds one). The
    observation is the Dict observation (``MultiInputPolicy``); wrap with
    SB3's own ``VecNormalize`` etc. as usual. ``seed(s)`` seeds the next
    ``reset`` (sub-env ``i`` gets ``s + i``).
    """

    def __init__(self, venv: SkillListVectorEnv) -> None:
        if venv.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                "Stable-Baselines3 needs SAME_STEP autoreset: build the vector env with "
                "autoreset_mode='SameStep' (SB3VecEnv.make does)"
            )
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    @classmethod
    def make(cls, num_envs: int, **kwargs: Any) -> SB3VecEnv:
        """``gymnasium.make_vec("teachgym/SkillList-v0", ...)`` with ``SAME_STEP``
        autoreset, adapted (``kwargs``: the experiment config's keys)."""
        venv = gym.make_vec(
            "teachgym/SkillList-v0",
            num_envs=num_envs,
            vectorization_mode="vector_entry_point",
            autoreset_mode=AutoresetMode.SAME_STEP,
            **kwargs,
        )
        return cls(venv)  # type: ignore[arg-type]

    def reset(self) -> Any:
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        obs, infos = self.venv.reset(seed=seeds)
        self.reset_infos = [unbatch_info(infos, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> Any:
        if self._actions is None:
            raise RuntimeError("step_async must come before step_wait")
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        self._actions = None
        dones = np.logical_or(terminated, truncated)
        out: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            info = unbatch_info(infos, i)
            if dones[i]:
                info = {**info.pop("final_info", {}), "reset_info": info}
                info["terminal_observation"] = infos["final_obs"][i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            out.append(info)
        return obs, rewards.astype(np.float32), dones, out

    def close(self) -> None:
        self.venv.close()

    def _targets(self, indices: Any) -> list[Any]:
        return [self.venv.envs[i] for i in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(env, attr_name) for env in self._targets(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        for env in self._targets(indices):
            setattr(env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        return [
            getattr(env, method_name)(*method_args, **method_kwargs)
            for env in self._targets(indices)
        ]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._targets(indices)]

    def _get_indices(self, indices: Any) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs
