"""``teachgym/SkillList-v0`` as a vector env over one population of students.

``gymnasium.make_vec("teachgym/SkillList-v0", num_envs=N)`` builds N SkillList
sub-envs whose students are the members of one
:class:`~teachgym.students.population.PopulationStudent`. A step generates each
sub-env's data on the CPU (one sub-env after another: generation is the
task's Python code), then trains every member on its own data in **one batched
computation**, and evaluates every member on the validation split (and, for
the sub-envs whose episode ends, the test split) in one batched decoding.

Each sub-env is a full :class:`~teachgym.envs.skill_list.SkillListEnv`: the
same budget, filter, reward, observation and info as a lone env. Sub-env
``i`` equals the lone env whose student is the tiny student with seed
``config.seed + i`` (what member ``i`` is), reset with the seed the vector
env gives it, up to floating-point rounding of the batched kernels.

Autoreset follows gymnasium 1.x: ``NEXT_STEP`` by default (the step after a
sub-episode ends resets it, ignoring its action, with reward 0), or
``SAME_STEP`` (``autoreset_mode=...``: the ending step returns the reset
observation, the final one in ``info["final_obs"]`` and ``info["final_info"]``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from teachgym.config import ExperimentConfig
from teachgym.envs.base import Parts, PendingStep
from teachgym.envs.skill_list import SkillListEnv
from teachgym.envs.tasks.base import Task, TaskCapabilities

__all__ = ["SkillListVectorEnv"]

_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)


class SkillListVectorEnv(VectorEnv):
    """N SkillList sub-envs over one population, stepped as one batch.

    Built by :func:`teachgym.assembly.make_skill_list_vector` (the vector entry
    point of ``teachgym/SkillList-v0``), which builds the task, the population
    and one generator per sub-env.

    Args:
        config: the experiment config every sub-env shares.
        task: the one task (every sub-env evaluates on its val and test splits).
        population: a population student with ``size`` members, ``member(i)``,
            ``train({member: examples})``, ``predict(problems, members)``.
        generators: one generator per sub-env.
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default) or ``SAME_STEP``.

    Observations and actions are the single env's spaces batched
    (``gymnasium.vector.utils.batch_space``): a Dict of ``(N, K)`` and
    ``(N, 1)`` float32 Boxes, and a ``(N, K)`` Box of weights. Infos are
    gymnasium's vector infos: each key an array over sub-envs with a ``_key``
    mask. ``info["timings"]`` of a sub-env holds the batch's wall times (train
    and evaluate are shared by all sub-envs of the step).
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 (gymnasium declares it this way)
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_modes": [],
    }

    def __init__(
        self,
        config: ExperimentConfig,
        task: Task,
        population: Any,
        generators: Sequence[Any],
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        mode = AutoresetMode(autoreset_mode)
        if mode not in _MODES:
            raise ValueError(f"autoreset_mode must be one of {[m.value for m in _MODES]}")
        if len(generators) != population.size:
            raise ValueError(f"{len(generators)} generators for {population.size} members")
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.autoreset_mode = mode
        self.config = config
        self.population = population
        self.num_envs = population.size
        caps = TaskCapabilities.of(task)
        self.envs = [
            SkillListEnv(
                config,
                Parts(task=task, caps=caps, student=population.member(i), generator=generator),
            )
            for i, generator in enumerate(generators)
        ]
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._obs: list[Any] = [None] * self.num_envs
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._started = False

    @property
    def skills(self) -> list[str]:
        """The skill order of every per-skill vector (the sub-envs')."""
        return self.envs[0].skills

    # -- batched phases ---------------------------------------------------------------
    def _evaluate(self, split: str, members: list[int]) -> dict[int, tuple[Any, Any]]:
        """``members``' reports on ``split``, decoded in one batch."""
        if not members:
            return {}
        problems = self.envs[members[0]].split_problems(split)  # type: ignore[arg-type]
        outputs = self.population.predict(problems, members)
        return {
            i: self.envs[i].report_of(split, out)  # type: ignore[arg-type]
            for i, out in zip(members, outputs, strict=True)
        }

    def _reset_members(
        self, members: list[int], seeds: Sequence[int | None]
    ) -> dict[int, tuple[Any, dict[str, Any]]]:
        """Reset ``members`` (their students, then one batched baseline evaluation)."""
        for i, seed in zip(members, seeds, strict=True):
            self.envs[i].begin_reset(seed=seed)
        t0 = time.perf_counter()
        reports = self._evaluate("val", members)
        seconds = time.perf_counter() - t0
        return {i: self.envs[i].end_reset(*reports[i], seconds) for i in members}

    def _batch(self, obs: Sequence[Any]) -> Any:
        """A fresh batched observation (never an array handed out before)."""
        out = create_empty_array(self.single_observation_space, self.num_envs)
        return concatenate(self.single_observation_space, obs, out)

    # -- the VectorEnv API --------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every sub-env (or those in ``options["reset_mask"]``).

        ``seed``: an int gives sub-env ``i`` the seed ``seed + i`` (as gymnasium's
        vector envs do), a list one seed each; ``None`` keeps each sub-env's
        generator, seeded on the first reset from ``config.seed + i``.
        """
        n = self.num_envs
        if seed is None:
            seeds: list[int | None] = [
                None if self._started else self.config.seed + i for i in range(n)
            ]
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"{len(seeds)} seeds for {n} sub-envs")
        mask = np.ones(n, dtype=np.bool_)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.shape != (n,) or mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({n},)")
        if not self._started and not mask.all():
            raise ValueError("the first reset must reset every sub-env")
        members = [i for i in range(n) if mask[i]]
        results = self._reset_members(members, [seeds[i] for i in members])
        infos: dict[str, Any] = {}
        for i, (obs, info) in results.items():
            self._obs[i] = obs
            infos = self._add_info(infos, info, i)
        self._autoreset[mask] = False
        self._started = True
        return self._batch(self._obs), infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One step of every sub-env: generation per sub-env, then one batched training
        of the members that got data, one batched evaluation (val, and test for the
        sub-envs whose episode ends), and gymnasium's autoreset."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        n = self.num_envs
        actions = np.asarray(actions)
        if actions.shape[:1] != (n,):
            raise ValueError(f"actions must have shape ({n}, ...), got {actions.shape}")
        resetting = [i for i in range(n) if self._autoreset[i]]
        stepping = [i for i in range(n) if not self._autoreset[i]]
        pending: dict[int, PendingStep] = {i: self.envs[i].begin_step(actions[i]) for i in stepping}
        for i in resetting:
            self.envs[i].begin_reset()
        t0 = time.perf_counter()
        data = {i: p.data.accepted for i, p in pending.items() if p.data.accepted}
        metrics = self.population.train(data) if data else {}
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        val = self._evaluate("val", stepping + resetting)
        eval_seconds = time.perf_counter() - t0
        ending = [i for i in stepping if self.envs[i].ends_episode(pending[i])]
        test = self._evaluate("test", ending)

        rewards = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=np.bool_)
        truncated = np.zeros(n, dtype=np.bool_)
        infos: dict[str, Any] = {}
        for i in resetting:
            self._obs[i], info = self.envs[i].end_reset(*val[i], eval_seconds)
            infos = self._add_info(infos, info, i)
        finished: list[int] = []
        for i in stepping:
            p = pending[i]
            p.timings["train"] = train_seconds
            p.timings["evaluate"] = eval_seconds
            test_report = test[i][0] if i in test else None
            obs, reward, term, trunc, info = self.envs[i].end_step(
                p, metrics.get(i, {}), *val[i], test_report=test_report
            )
            self._obs[i], rewards[i], terminated[i], truncated[i] = obs, reward, term, trunc
            if (term or trunc) and self.autoreset_mode == AutoresetMode.SAME_STEP:
                infos = self._add_info(infos, {"final_obs": obs, "final_info": info}, i)
                finished.append(i)
            else:
                infos = self._add_info(infos, info, i)
        if finished:
            for i, (obs, info) in self._reset_members(finished, [None] * len(finished)).items():
                self._obs[i] = obs
                infos = self._add_info(infos, info, i)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = np.logical_or(terminated, truncated)
        return self._batch(self._obs), rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()
