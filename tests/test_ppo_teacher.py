"""The learned PPO teacher: its feature and action maps, the saved-teacher format,
``teacher=<dir>``, training on the population vector env, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import teachgym  # noqa: F401 (registers the env ids)
from teachgym.agents.policies.ppo import (
    ACTION_SCALE,
    PPOTeacher,
    features,
    is_saved_teacher,
    load_teacher,
    policy_weights,
)
from teachgym.assembly import build_teacher, make_env
from teachgym.config import build_config, load_config
from teachgym.errors import ConfigError
from teachgym.experiments.cli import main
from teachgym.experiments.teacher_training import (
    TeacherTrainingConfig,
    load_training_config,
    train_teacher,
)

#: Three steps of 20 examples, a small student: a training episode takes a second or two.
SMALL: dict[str, Any] = {
    "task_kwargs.val_per_skill": 4,
    "task_kwargs.test_per_skill": 4,
    "student_kwargs.hidden_size": 32,
    "student_kwargs.layers": 1,
    "student_kwargs.heads": 2,
    "student_kwargs.batch_size": 16,
    "budget": 60,
    "examples_per_step": 20,
    "threads": 1,
    # A cost per example makes every reward non-zero even while the small student
    # learns nothing, so the returns' scale is visible.
    "cost_per_example": 1e-4,
}


def _training(**extra: Any) -> TeacherTrainingConfig:
    # A large reward scale: the logged returns must still be the env's accuracy gains.
    base = {
        "experiment": "leaderboard",
        "overrides": SMALL,
        "num_envs": 2,
        "episodes": 2,
        "reward_scale": 1000.0,
    }
    return TeacherTrainingConfig.model_validate({**base, **extra})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    lines: list[str] = []
    train_teacher(_training(), out, log=lines.append)
    assert any("episode 2/2" in line for line in lines)  # progress is shown per episode
    return out


def test_features_are_fractions_of_the_budget() -> None:
    obs = {"accuracy": [0.25, np.nan], "examples_used": [50, 150], "budget_left": [800]}
    got = features(obs, 1000)
    assert got.dtype == np.float32 and got.shape == (5,)
    # NaN (not measured) reads as 0; counts become fractions of the budget.
    np.testing.assert_allclose(got, [0.25, 0.0, 0.05, 0.15, 0.8], rtol=1e-6)
    # The same episode at 10x the budget reads the same: a short-profile policy transfers.
    scaled = {"accuracy": [0.25, np.nan], "examples_used": [500, 1500], "budget_left": [8000]}
    np.testing.assert_allclose(features(scaled, 10_000), got, rtol=1e-6)
    with pytest.raises(ValueError, match="budget"):
        features(obs, 0)


def test_policy_weights_keep_every_skill_and_the_top_at_one() -> None:
    w = policy_weights([1.0, -1.0, 0.0, 7.0])  # outside [-1, 1] is clipped
    assert w.dtype == np.float32 and w.max() == 1.0 and (w > 0).all()
    np.testing.assert_allclose(w[1], np.exp(-2 * ACTION_SCALE), rtol=1e-6)
    np.testing.assert_allclose(w[2], np.exp(-ACTION_SCALE), rtol=1e-6)
    assert w[3] == 1.0


def test_a_teacher_path_means_the_ppo_teacher(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    config = build_config({}, {"teacher": "runs/t"})
    assert config.teacher == "ppo"
    assert config.teacher_kwargs["path"] == str(tmp_path / "runs" / "t")
    # A resolved config builds to itself (config.yaml of a run, resume).
    assert build_config(config.model_dump()) == config
    # Names and import paths stay names.
    assert build_config({}, {"teacher": "my_teachers:Greedy"}).teacher == "my_teachers:Greedy"
    with pytest.raises(ConfigError, match="names another"):
        build_config({}, {"teacher": "runs/t", "teacher_kwargs.path": "/elsewhere"})
    # In a config file, the directory is relative to the file.
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "x.yaml").write_text("teacher: ../teachers/ppo\n")
    assert load_config(tmp_path / "cfg" / "x.yaml").teacher_kwargs["path"] == str(
        tmp_path / "teachers" / "ppo"
    )


def test_bad_saved_teachers_are_one_config_error(tmp_path: Path, trained: Path) -> None:
    assert is_saved_teacher(trained) and not is_saved_teacher(tmp_path)
    with pytest.raises(ConfigError, match="not a saved teacher"):
        load_teacher(tmp_path)
    (tmp_path / "teacher.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_teacher(tmp_path)
    (tmp_path / "teacher.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ConfigError, match="format"):
        load_teacher(tmp_path)
    meta = json.loads((trained / "teacher.json").read_text())
    (tmp_path / "teacher.json").write_text(json.dumps({**meta, "skills": ["a", "b"]}))
    (tmp_path / "policy.zip").write_bytes((trained / "policy.zip").read_bytes())
    with pytest.raises(ConfigError, match="features"):
        load_teacher(tmp_path)  # 2 skills need 5 features; the policy reads 15


def test_the_saved_teacher_records_its_training(trained: Path) -> None:
    meta = json.loads((trained / "teacher.json").read_text())
    assert meta["complete"] is True and meta["episodes_done"] == 2
    assert meta["timesteps"] == 2 * 3  # two sub-envs x three steps
    assert meta["skills"] == load_config("leaderboard").task_kwargs["skills"]
    rows = [json.loads(line) for line in (trained / "training.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [0, 1]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    # The return is the episode's val accuracy gain, not PPO's scaled reward.
    assert all(-1.0 <= r["return"] <= 1.0 for r in rows)
    assert any(r["return"] != 0.0 for r in rows)
    assert all(abs(r["return"]) <= r["val_accuracy"] + 1e-6 for r in rows if r["return"] > 0)


def test_teacher_path_acts_as_the_trained_policy(trained: Path) -> None:
    config = load_config("leaderboard", {**SMALL, "teacher": str(trained)})
    env = make_env(config.env, config)
    try:
        teacher = build_teacher(config, env)
        assert isinstance(teacher, PPOTeacher)
        obs, info = env.reset(seed=0)
        for _ in range(3):
            action = teacher.act(obs, info)
            expected, _ = teacher.model.predict(features(obs, 60), deterministic=True)
            np.testing.assert_array_equal(action, policy_weights(expected))
            assert action in env.action_space
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
    finally:
        env.close()


def test_other_skills_are_refused(trained: Path) -> None:
    config = load_config(
        "leaderboard", {**SMALL, "teacher": str(trained), "task_kwargs.skills": ["add/carry"]}
    )
    env = make_env(config.env, config)
    try:
        with pytest.raises(ConfigError, match="trained on skills"):
            build_teacher(config, env)
    finally:
        env.close()


@pytest.mark.slow
def test_training_is_deterministic(tmp_path: Path, trained: Path) -> None:
    train_teacher(_training(), tmp_path, log=lambda line: None)
    a = load_teacher(trained).model.policy.state_dict()
    b = load_teacher(tmp_path).model.policy.state_dict()
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    first = (trained / "training.jsonl").read_text().splitlines()
    again = (tmp_path / "training.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if k != "elapsed_s"} for r in first]
    assert strip == [{k: v for k, v in json.loads(r).items() if k != "elapsed_s"} for r in again]


def test_training_config_errors_are_one_line(tmp_path: Path, capsys: Any) -> None:
    assert main(["train-teacher", "no_such_config", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a file nor a packaged one (ppo)" in err[0]
    assert main(["train-teacher", "ppo", "num_envs=0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_envs" in err[0]
    assert main(["train-teacher", "ppo", "epochs=3", "--out", str(tmp_path / "o")]) == 2
    assert "epochs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_packaged_config_loads() -> None:
    config = load_training_config("ppo")
    experiment = config.experiment_config()
    assert experiment.student == "tiny" and experiment.budget == 24000
    assert experiment.seed == config.seed


def test_training_runs_rollouts_until_the_episodes_are_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Episodes can outlast the budget's step count (a step trains on fewer examples than
    # asked when duplicates are dropped); here a rollout is one step and an episode three,
    # so a fixed number of rollouts would end before any episode finished.
    import teachgym.experiments.teacher_training as training

    monkeypatch.setattr(training, "steps_per_episode", lambda config: 1)
    env_rewards: list[np.ndarray] = []  # what the env returned, before PPO's scaling
    wait = training.FeatureVecEnv.step_wait

    def recording(self: Any) -> Any:
        out = wait(self)
        env_rewards.append(np.array(out[1], dtype=np.float64))
        return out

    monkeypatch.setattr(training.FeatureVecEnv, "step_wait", recording)
    lines: list[str] = []
    train_teacher(_training(), tmp_path, log=lines.append)
    meta = json.loads((tmp_path / "teacher.json").read_text())
    assert meta["complete"] is True and meta["episodes_done"] == 2
    assert meta["timesteps"] == 2 * 3  # three one-step rollouts of two sub-envs
    rows = [json.loads(r) for r in (tmp_path / "training.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [0, 1]
    # Both sub-envs end together after three steps: a return is its sub-env's three
    # rewards, summed across the rollouts it spanned.
    assert len(env_rewards) == 3
    want = sorted(np.sum(env_rewards, axis=0).tolist())
    assert sorted(r["return"] for r in rows) == pytest.approx(want, abs=1e-6)
