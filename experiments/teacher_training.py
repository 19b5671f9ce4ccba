"""``teachgym train-teacher``: train a PPO teacher on the population vector env.

One command, one config (:class:`TeacherTrainingConfig`, a YAML file; the
packaged one is ``experiments/configs/teachers/ppo.yaml``)::

    teachgym train-teacher ppo --out runs/ppo-teacher
    teachgym run teacher=runs/ppo-teacher

Each PPO rollout steps ``num_envs`` SkillList episodes at once over one
population of tiny students (:mod:`teachgym.envs.vector`, adapted to
Stable-Baselines3 by :mod:`teachgym.envs.sb3`). The policy reads and writes
the formats :mod:`teachgym.agents.policies.ppo` owns (features, action map,
saved directory), through :class:`FeatureVecEnv`, so what it learns here is
what it does as ``teacher=<dir>``.

Nothing is lost on a crash: after every rollout the policy so far is saved to
the output directory (``teacher.json`` says ``complete: false`` until the
last), and ``training.jsonl`` gets one row per finished training episode
(its return, its final validation accuracy), which is also the progress shown.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnvWrapper

from teachgym.agents.policies.ppo import feature_size, features, policy_weights, save_teacher
from teachgym.config import (
    ExperimentConfig,
    apply_overrides,
    build_config,
    read_config_file,
    resolve_config_path,
    short,
)
from teachgym.envs.sb3 import SB3VecEnv
from teachgym.errors import ConfigError
from teachgym.runtime import cpu_name

__all__ = [
    "FeatureVecEnv",
    "TeacherTrainingConfig",
    "load_training_config",
    "train_teacher",
]

#: Packaged teacher-training configs live here (not with the experiment configs:
#: they are another format).
TEACHER_CONFIGS = Path(__file__).parent / "configs" / "teachers"


class TeacherTrainingConfig(BaseModel):
    """What ``teachgym train-teacher`` reads: the episodes the teacher trains on and PPO's
    settings (Stable-Baselines3's names)."""

    model_config = ConfigDict(extra="forbid")

    experiment: str = Field(
        default="leaderboard",
        description="the experiment config of the training episodes (a path or a packaged "
        "config's name); its student must be `tiny` (the population)",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="experiment keys changed for training"
    )
    num_envs: int = Field(default=8, ge=1, description="episodes stepped at once")
    episodes: int = Field(default=64, ge=1, description="training episodes in all")
    n_epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=2)
    learning_rate: float = Field(default=3e-4, gt=0.0)
    gamma: float = Field(default=1.0, gt=0.0, le=1.0, description="1: the return is the gain")
    gae_lambda: float = Field(default=0.95, gt=0.0, le=1.0)
    clip_range: float = Field(default=0.2, gt=0.0)
    ent_coef: float = Field(default=0.0, ge=0.0)
    reward_scale: float = Field(
        default=10.0, gt=0.0, description="rewards (accuracy gains) times this for PPO"
    )
    net_arch: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    seed: int = Field(default=0, ge=0)

    def experiment_config(self) -> ExperimentConfig:
        """The training episodes' experiment config (overrides applied, seed set)."""
        data = read_config_file(resolve_config_path(self.experiment))
        return build_config(data, {**self.overrides, "seed": self.seed})


def load_training_config(
    path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None
) -> TeacherTrainingConfig:
    """A teacher-training config from a file or a packaged name (``ppo``), with
    ``key=value`` overrides; anything wrong is one :class:`ConfigError` line."""
    name = "ppo" if path is None else str(path)
    file = Path(name)
    if not file.is_file():
        packaged = TEACHER_CONFIGS / f"{name.removesuffix('.yaml')}.yaml"
        if "/" in name or not packaged.is_file():
            known = sorted(p.stem for p in TEACHER_CONFIGS.glob("*.yaml"))
            raise ConfigError(
                f"teacher-training config {short(name)} is neither a file nor a packaged "
                f"one ({', '.join(known)})"
            )
        file = packaged
    data = apply_overrides(read_config_file(file), dict(overrides or {}))
    try:
        return TeacherTrainingConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"{file}: {where}: {first['msg']}") from None


def steps_per_episode(config: ExperimentConfig) -> int:
    """Env steps of one episode: the budget in steps, at most ``max_steps``."""
    return min(config.max_steps, math.ceil(config.budget / config.examples_per_step))


class FeatureVecEnv(VecEnvWrapper):
    """The population vector env as the PPO policy sees it: :func:`features` in,
    :func:`policy_weights` out (the same maps :class:`PPOTeacher` uses to act)."""

    def __init__(self, venv: SB3VecEnv, budget: float) -> None:
        k = len(venv.venv.skills)
        self.budget = float(budget)
        super().__init__(
            venv,
            observation_space=spaces.Box(0.0, 1.0, shape=(feature_size(k),), dtype=np.float32),
            action_space=spaces.Box(-1.0, 1.0, shape=(k,), dtype=np.float32),
        )

    def _features(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        rows = [{key: value[i] for key, value in obs.items()} for i in range(self.num_envs)]
        return np.stack([features(row, self.budget) for row in rows])

    def reset(self) -> np.ndarray:
        return self._features(self.venv.reset())

    def step_async(self, actions: np.ndarray) -> None:
        self.venv.step_async(np.stack([policy_weights(a) for a in actions]))

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = features(info["terminal_observation"], self.budget)
        return self._features(obs), rewards, dones, infos


class _RewardScale(VecEnvWrapper):
    """Rewards times a constant: accuracy gains are small numbers for PPO's value head."""

    def __init__(self, venv: Any, scale: float) -> None:
        self.scale = float(scale)
        super().__init__(venv)

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards * self.scale, dones, infos


class _Progress(BaseCallback):
    """Logs each finished training episode (``training.jsonl``, one printed line) and saves
    the policy after every rollout, so a crash loses at most one rollout."""

    def __init__(
        self, out: Path, skills: Sequence[str], meta: dict[str, Any], log: Any, config: Any
    ) -> None:
        super().__init__()
        self.out, self.skills, self.meta, self.log = out, list(skills), meta, log
        self.scale = float(config.reward_scale)
        self.episodes = math.ceil(config.episodes / config.num_envs) * config.num_envs
        self.returns = np.zeros(0)
        self.done = 0
        self.t0 = time.perf_counter()
        self.rows = (out / "training.jsonl").open("w")

    def _on_training_start(self) -> None:
        # Called by every ``learn`` (one per rollout): an episode's return runs on across
        # rollouts, so it is set up once.
        if self.returns.size != self.training_env.num_envs:
            self.returns = np.zeros(self.training_env.num_envs)

    def _on_step(self) -> bool:
        # PPO sees the scaled rewards; the log shows the env's (the episode's accuracy gain).
        self.returns += np.asarray(self.locals["rewards"], dtype=np.float64) / self.scale
        for i, (done, info) in enumerate(
            zip(self.locals["dones"], self.locals["infos"], strict=True)
        ):
            if not done:
                continue
            row = {
                "episode": self.done,
                "return": round(float(self.returns[i]), 6),
                "val_accuracy": info.get("accuracy"),
                "test_accuracy": info.get("test_accuracy"),
                "elapsed_s": round(time.perf_counter() - self.t0, 2),
            }
            self.rows.write(json.dumps(row) + "\n")
            self.rows.flush()
            self.done += 1
            self.returns[i] = 0.0
            self.log(
                f"episode {self.done}/{self.episodes}: return {row['return']:.3f}, "
                f"val accuracy {_fmt(row['val_accuracy'])}, {row['elapsed_s']:.0f} s"
            )
        return True

    def _on_rollout_end(self) -> None:
        self.save(complete=False)

    def save(self, *, complete: bool) -> None:
        info = {
            **self.meta,
            "complete": complete,
            "episodes_done": self.done,
            "timesteps": int(self.num_timesteps),
            "wall_s": round(time.perf_counter() - self.t0, 1),
        }
        save_teacher(self.out, self.model, self.skills, info)

    def close(self) -> None:
        self.rows.close()


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def train_teacher(
    config: TeacherTrainingConfig, out: str | os.PathLike[str], log: Any = print
) -> Path:
    """Train the PPO teacher ``config`` describes; the saved teacher's directory.

    PPO collects ``num_envs * steps_per_episode`` transitions per rollout (an
    episode of every sub-env when each spends its budget in that many steps), and
    trains rollout after rollout until ``episodes`` episodes are done (rounded up to
    whole rollouts). An episode whose steps train on fewer examples than asked (a skill
    has fewer distinct problems than the step asks of it, or duplicates are dropped)
    lasts longer, so the rollouts are counted by the episodes they finish, not fixed in
    advance.
    """
    experiment = config.experiment_config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps_per_episode(experiment)
    venv = gym.make_vec(
        experiment.env,
        num_envs=config.num_envs,
        vectorization_mode="vector_entry_point",
        autoreset_mode=AutoresetMode.SAME_STEP,
        config=experiment,
    )
    skills = list(venv.skills)  # type: ignore[attr-defined]
    env = _RewardScale(FeatureVecEnv(SB3VecEnv(venv), experiment.budget), config.reward_scale)
    env.seed(config.seed)
    n_steps = steps
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=n_steps,
        batch_size=min(config.batch_size, n_steps * config.num_envs),
        n_epochs=config.n_epochs,
        learning_rate=config.learning_rate,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        policy_kwargs={"net_arch": list(config.net_arch)},
        seed=config.seed,
        device="cpu",
        verbose=0,
    )
    meta = {
        "training": config.model_dump(),
        "experiment": experiment.model_dump(mode="json"),
        "machine": cpu_name(),
    }
    progress = _Progress(out, skills, meta, log, config)
    log(
        f"train-teacher: {progress.episodes} episodes, {config.num_envs} at once, in rollouts "
        f"of {steps} steps each on {experiment.env} ({experiment.budget} examples an episode) "
        f"-> {out}"
    )
    try:
        first = True
        while progress.done < progress.episodes:  # every episode ends within max_steps
            model.learn(
                total_timesteps=n_steps * config.num_envs,
                callback=progress,
                reset_num_timesteps=first,
            )
            first = False
        progress.save(complete=True)
    finally:
        progress.close()
        env.close()
    return out
