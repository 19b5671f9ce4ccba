"""The SkillList vector env over one population: gymnasium's vector contract, autoreset,
determinism, equality with lone envs, and the Stable-Baselines3 adapter."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_returned_data_not_reused, data_equivalence
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

import teachgym  # noqa: F401 (registers the env ids)
from teachgym.assembly import build_task, make_env
from teachgym.config import build_config
from teachgym.envs.vector import SkillListVectorEnv
from teachgym.errors import ConfigError
from teachgym.students.tiny import tiny_student_for_task

ENV_ID = "teachgym/SkillList-v0"
#: Three steps of 20 examples spend the budget: episodes end quickly, autoreset shows.
SMALL: dict[str, Any] = {
    "task_kwargs": {"val_per_skill": 4, "test_per_skill": 4},
    "student_kwargs": {"hidden_size": 32, "layers": 1, "heads": 2, "batch_size": 16},
    "budget": 60,
    "examples_per_step": 20,
    "max_steps": 10,
}


def _vec(n: int = 3, **extra: Any) -> SkillListVectorEnv:
    return gym.make_vec(  # type: ignore[return-value]
        ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", **SMALL, **extra
    )


def test_make_vec_spaces_and_shapes():
    env = _vec()
    assert isinstance(env, SkillListVectorEnv)
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    # The registered default: make_vec without a mode picks the vector entry point.
    assert isinstance(gym.make_vec(ENV_ID, num_envs=2, **SMALL), SkillListVectorEnv)
    single = env.single_observation_space
    assert env.observation_space == batch_space(single, 3)
    assert env.action_space == batch_space(env.single_action_space, 3)
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space
    k = len(env.skills)
    assert obs["accuracy"].shape == (3, k) and obs["accuracy"].dtype == np.float32
    assert obs["budget_left"].shape == (3, 1) and np.all(obs["budget_left"] == 60)
    assert info["_accuracy"].all() and info["accuracy"].shape == (3,)
    env.action_space.seed(0)
    obs, rewards, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs in env.observation_space
    assert rewards.shape == (3,) and rewards.dtype == np.float64
    assert terminated.dtype == np.bool_ and truncated.dtype == np.bool_
    assert np.all(obs["budget_left"] == 40) and np.all(info["examples_accepted"] == 20)
    assert np.all(info["train"]["steps"] == 2)  # each member trained on its 20 examples


def test_next_step_autoreset():
    env = _vec(2)
    env.reset(seed=0)
    ones = np.ones((2, len(env.skills)), dtype=np.float32)
    for _ in range(2):
        _, _, terminated, _, info = env.step(ones)
        assert not terminated.any() and "test_accuracy" not in info
    obs, rewards, terminated, truncated, info = env.step(ones)
    assert terminated.all() and np.all(obs["budget_left"] == 0)
    assert info["_test_accuracy"].all()
    # The next step resets (its actions are ignored): reward 0, a fresh episode.
    obs, rewards, terminated, truncated, info = env.step(ones * 0)
    assert np.all(rewards == 0) and not (terminated.any() or truncated.any())
    assert np.all(obs["budget_left"] == 60) and np.all(info["step"] == 0)
    obs, *_ = env.step(ones)
    assert np.all(obs["budget_left"] == 40)


def test_same_step_autoreset_returns_final_obs():
    env = _vec(2, autoreset_mode=AutoresetMode.SAME_STEP)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    env.reset(seed=0)
    ones = np.ones((2, len(env.skills)), dtype=np.float32)
    for _ in range(2):
        env.step(ones)
    obs, _, terminated, _, info = env.step(ones)
    assert terminated.all() and np.all(obs["budget_left"] == 60)  # already reset
    assert all(final["budget_left"][0] == 0 for final in info["final_obs"])
    assert info["final_info"]["_test_accuracy"].all()


def _rollout(env: SkillListVectorEnv, seed: int, steps: int) -> list[Any]:
    out: list[Any] = [env.reset(seed=seed)[0]]
    env.action_space.seed(seed)
    for _ in range(steps):
        obs, rewards, terminated, truncated, info = env.step(env.action_space.sample())
        out += [obs, rewards, terminated, truncated, info["accuracy"], info.get("train", {})]
    return out


@pytest.mark.slow
def test_determinism_and_fresh_data():
    a, b = _vec(2), _vec(2)
    assert data_equivalence(_rollout(a, 3, 4), _rollout(b, 3, 4))
    assert not data_equivalence(_rollout(a, 3, 2), _rollout(b, 4, 2))
    # gymnasium's identity check (it reads ``terminated`` as one bool: one sub-env).
    check_returned_data_not_reused(_vec(1))


@pytest.mark.slow
def test_sub_envs_equal_lone_envs():
    """Sub-env i is the lone env whose tiny student has seed config.seed + i, reset with
    seed + i, given the same actions: the same observations and rewards."""
    vec = _vec(2)
    cfg = build_config(SMALL, {"env": ENV_ID})
    task = build_task(cfg)
    lones = [
        make_env(
            ENV_ID,
            cfg,
            task=task,
            student=tiny_student_for_task(task, seed=cfg.seed + i, **cfg.student_kwargs),
        )
        for i in range(2)
    ]
    obs, _ = vec.reset(seed=10)
    lone_obs = [env.reset(seed=10 + i)[0] for i, env in enumerate(lones)]
    rng = np.random.default_rng(0)
    for _ in range(3):
        for i in range(2):
            for key in obs:
                np.testing.assert_allclose(obs[key][i], lone_obs[i][key], atol=1e-6)
        actions = rng.random((2, len(vec.skills)), dtype=np.float32)
        obs, rewards, terminated, _, info = vec.step(actions)
        for i, env in enumerate(lones):
            lone_obs[i], reward, term, _, lone_info = env.step(actions[i])
            assert reward == pytest.approx(rewards[i], abs=1e-6) and term == terminated[i]
            assert lone_info["train"]["loss"] == pytest.approx(info["train"]["loss"][i], abs=1e-4)
            if term:
                assert lone_info["test_accuracy"] == pytest.approx(info["test_accuracy"][i])
    assert terminated.all()


def test_unsupported_configs_are_config_errors():
    with pytest.raises(ConfigError, match="student: tiny"):
        _vec(2, student="smollm2")
    with pytest.raises(ConfigError, match="num_envs"):
        gym.make_vec(ENV_ID, num_envs=0, vectorization_mode="vector_entry_point", **SMALL)


@pytest.mark.slow
def test_stable_baselines3_drives_the_population():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    from teachgym.envs.sb3 import SB3VecEnv

    venv = SB3VecEnv.make(2, **SMALL)
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnv(_vec(2))
    venv.seed(5)
    obs = venv.reset()
    assert obs["accuracy"].shape == (2, len(venv.venv.skills))
    ones = np.ones((2, len(venv.venv.skills)), dtype=np.float32)
    for _ in range(3):
        obs, rewards, dones, infos = venv.step(ones)
    assert dones.all() and rewards.dtype == np.float32
    assert all(info["terminal_observation"]["budget_left"][0] == 0 for info in infos)
    assert all("test_accuracy" in info and not info["TimeLimit.truncated"] for info in infos)
    assert np.all(obs["budget_left"] == 60)
    model = PPO("MultiInputPolicy", venv, n_steps=4, batch_size=8, n_epochs=1, seed=0)
    model.learn(total_timesteps=8)
    assert model.num_timesteps == 8


def test_population_benchmark_runs_small(capsys):
    """benchmarks/population.py --small: both ways finish the same episodes and agree."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "population.py"
    spec = importlib.util.spec_from_file_location("population_benchmark", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ratio = bench.main(["--small", "--n", "2", "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert ratio > 0 and "ratio:" in out and "(agree 1.00)" in out
