"""The runner, the run directory, resume after SIGKILL, compare, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from teachgym import registry
from teachgym.config import ConfigError, default_config_path, load_config
from teachgym.experiments.cli import main
from teachgym.experiments.runner import EpisodeRunner, RunError, read_jsonl
from teachgym.runtime import default_threads

SMOKE = Path(default_config_path()).with_name("smoke.yaml")


def _run(tmp_path: Path, name: str, **overrides) -> tuple[Path, dict]:
    config = load_config(SMOKE, overrides)
    out = tmp_path / name
    return out, EpisodeRunner(config, out).run()


def test_run_directory_has_every_artifact(tmp_path):
    out, summary = _run(tmp_path, "run")
    steps = read_jsonl(out / "steps.jsonl")
    assert [r["step"] for r in steps] == list(range(len(steps)))
    assert steps[-1]["terminated"] and steps[-1]["examples_total"] == summary["examples_used"]
    for k in range(1, len(steps)):
        assert (out / "data" / f"step_{k:04d}.jsonl").stat().st_size > 0
        preds = read_jsonl(out / "predictions" / f"step_{k:04d}.jsonl")
        assert len(preds) == 7 * 8 and {"problem_id", "completion", "correct"} <= set(preds[0])
    for name in ("config.yaml", "learning_curve.png", "skills_heatmap.png", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "checkpoint" / "student" / "model.safetensors").exists()
    saved = json.loads((out / "summary.json").read_text())
    for key in (
        "final_val_accuracy",
        "final_test_accuracy",
        "aulc",
        "examples_used",
        "steps",
        "wall_seconds",
    ):
        assert key in saved
    assert saved["steps"] == len(steps) - 1 and saved["examples_used"] == 600  # the budget
    assert [t["step"] for t in read_jsonl(out / "timings.jsonl")] == list(range(1, len(steps)))
    # Throughput per step, step 0's evaluation included, kept out of steps.jsonl.
    perf = read_jsonl(out / "perf.jsonl")
    assert [p["step"] for p in perf] == list(range(len(steps)))
    assert all(p["eval_tokens_per_s"] > 0 for p in perf)
    assert (
        all(p["train_tokens_per_s"] > 0 for p in perf[1:]) and "train_tokens_per_s" not in perf[0]
    )
    assert not any("tokens_per_s" in json.dumps(row) for row in steps)
    recorded = load_config(out / "config.yaml")
    assert recorded.threads == default_threads()  # the resolved count is part of the record


def test_refuses_to_overwrite_a_run(tmp_path):
    out, _ = _run(tmp_path, "run")
    with pytest.raises(RunError, match="already holds a run"):
        EpisodeRunner(load_config(SMOKE), out).run()


def test_same_config_same_steps(tmp_path):
    a, _ = _run(tmp_path, "a")
    b, _ = _run(tmp_path, "b")
    assert (a / "steps.jsonl").read_bytes() == (b / "steps.jsonl").read_bytes()
    c, _ = _run(tmp_path, "c", seed=1)
    assert (a / "steps.jsonl").read_bytes() != (c / "steps.jsonl").read_bytes()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "teachgym.experiments.cli", *args]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    overrides = ["budget=1200", "max_steps=12"]
    whole = tmp_path / "whole"
    subprocess.run(
        _cli("run", str(SMOKE), *overrides, "--out", str(whole)), check=True, capture_output=True
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli("run", str(SMOKE), *overrides, "--out", str(killed)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(read_jsonl(killed / "steps.jsonl")) < 5:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows_at_kill = len(read_jsonl(killed / "steps.jsonl"))
    assert 5 <= rows_at_kill < 13, "the kill must land mid-episode"
    assert not (killed / "summary.json").exists()
    subprocess.run(_cli("run", "--resume", str(killed)), check=True, capture_output=True)
    assert (killed / "steps.jsonl").read_bytes() == (whole / "steps.jsonl").read_bytes()
    assert json.loads((killed / "summary.json").read_text())["aulc"] == pytest.approx(
        json.loads((whole / "summary.json").read_text())["aulc"]
    )


def test_resume_drops_rows_newer_than_the_checkpoint(tmp_path):
    whole, _ = _run(tmp_path, "whole")
    config = load_config(SMOKE)
    out = tmp_path / "partial"
    assert EpisodeRunner(config, out).run(max_new_steps=3) is None
    assert not (out / "summary.json").exists()
    # A crash between writing a row and swapping the checkpoint leaves a row
    # newer than the checkpoint, possibly torn: resume must drop and replay it.
    with (out / "steps.jsonl").open("a") as f:
        f.write('{"step": 4, "val_accuracy": 0.5}\n{"step": 5, "val_acc')
    summary = EpisodeRunner.from_run_dir(out).run()
    assert summary is not None
    assert (out / "steps.jsonl").read_bytes() == (whole / "steps.jsonl").read_bytes()


def test_curriculum_run_sliced_and_resumed_matches_uninterrupted(tmp_path):
    # The curriculum's open level is teacher state: a resume that lost it would feed
    # the wrong skills after the restart.
    kw = {"teacher": "curriculum", "teacher_kwargs": {"patience": 2}}
    whole, _ = _run(tmp_path, "whole", **kw)
    rows = read_jsonl(whole / "steps.jsonl")
    hard = ["add/carry_3d", "sub/borrow_3d", "cmp/3d"]
    assert all(rows[1]["examples_used"][s] == 0 for s in hard)
    assert all(rows[-1]["examples_used"][s] > 0 for s in hard)
    out = tmp_path / "sliced"
    assert EpisodeRunner(load_config(SMOKE, kw), out).run(max_new_steps=3) is None
    assert EpisodeRunner.from_run_dir(out).run() is not None
    assert (out / "steps.jsonl").read_bytes() == (whole / "steps.jsonl").read_bytes()


def test_resume_of_a_missing_run_is_refused(tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        EpisodeRunner.from_run_dir(tmp_path / "nothing")


def test_compare_writes_leaderboard_and_plot(tmp_path, capsys):
    code = main(
        [
            "compare",
            str(SMOKE),
            "budget=200",
            "--teachers",
            "uniform,weakest",
            "--seeds",
            "2",
            "--out",
            str(tmp_path / "cmp"),
        ]
    )
    assert code == 0
    board = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    assert {r["teacher"] for r in board} == {"uniform", "weakest"}
    for row in board:
        # The contract's keys, and the examples-to-target columns beside them.
        assert set(row) == {
            "teacher",
            "aulc_mean",
            "aulc_ci95",
            "final_test_mean",
            "final_test_ci95",
            "examples_mean",
            "seeds",
            "examples_to_target_mean",
            "examples_to_target_ci95",
            "target_reached",
        }
        assert row["seeds"] == 2
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0
    # The leader against the other teacher, paired by seed.
    [paired] = json.loads((tmp_path / "cmp" / "paired.json").read_text())
    assert paired["reference"] == board[0]["teacher"] and paired["teacher"] == board[1]["teacher"]
    assert paired["seeds"] == 2 and 0 <= paired["wins"] <= 2
    assert paired["aulc_diff_mean"] == pytest.approx(board[0]["aulc_mean"] - board[1]["aulc_mean"])
    out = capsys.readouterr().out
    assert "leaderboard" in out and "paired by seed" in out
    # A second call reuses the finished episodes instead of rerunning them.
    [seed0] = (tmp_path / "cmp" / "uniform").glob("seed_0-*")
    mtime = (seed0 / "summary.json").stat().st_mtime
    main(
        [
            "compare",
            str(SMOKE),
            "budget=200",
            "--teachers",
            "uniform,weakest",
            "--seeds",
            "2",
            "--out",
            str(tmp_path / "cmp"),
        ]
    )
    assert (seed0 / "summary.json").stat().st_mtime == mtime


def test_cli_run_with_user_teacher_by_import_path(tmp_path, capsys):
    out = tmp_path / "greedy"
    code = main(
        [
            "run",
            str(SMOKE),
            "teacher=teachgym.experiments.examples.greedy_teacher:GreedyTeacher",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "per-step validation accuracy" in text and "final val accuracy" in text
    assert "GreedyTeacher" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "budgett=3"], "unknown config key 'budgett'"),
        (["run", "budget=-5"], "budget"),
        (["run", "teacher=nobody"], "unknown teacher 'nobody'"),
        (
            ["run", "teacher=curriculum", "teacher_kwargs.gate=2"],
            "gate 2 is invalid: Input should be less",
        ),
        (["run", "teacher_kwargs.gatee=0.3"], "unknown option 'gatee'; did you mean 'gate'?"),
        (["run", "teacher=no_such_module:T"], "no module named 'no_such_module'"),
        (["run", "missing.yaml"], "does not exist"),
        (["run", "SMOKE", "seed"], "unexpected argument 'seed'"),
        (["run", "--resume", "nowhere"], "no config.yaml"),
        (["compare", "--teachers", "uniform,nobody", "--seeds", "1"], "unknown teacher"),
    ],
)
def test_a_user_mistake_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
    argv = [str(SMOKE) if a == "SMOKE" else a for a in argv]
    if "--resume" not in argv:
        argv += ["--out", str(tmp_path / "x")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("teachgym: error:") and message in err
    assert "Traceback" not in err


class _Broken:
    """A teacher with a bug: a ValueError from deep inside a run is not a user's mistake."""

    def __init__(self, env, seed=0):
        self.env = env

    def act(self, observation, info):
        return float("nan") * observation["accuracy"]  # NaN weights: the env raises ValueError

    def update(self, *args):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_failure_inside_a_run_shows_its_traceback_and_exit_code_1(capsys, tmp_path):
    registry.register("teacher", "broken_for_test", _Broken)
    code = main(["run", str(SMOKE), "teacher=broken_for_test", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err and "ValueError" in err
    assert "must be finite" in err


def test_config_overrides_nested_keys():
    cfg = load_config(None, {"student_kwargs.lr": 0.001, "task_kwargs.val_per_skill": 8})
    assert cfg.student_kwargs["lr"] == 0.001 and cfg.task_kwargs["val_per_skill"] == 8
    with pytest.raises(ConfigError, match="examples_per_step=7000 exceeds budget=6000"):
        load_config(None, {"budget": 6000, "examples_per_step": 7000})


def test_wandb_logs_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    made = _spy_on_wandb(monkeypatch)
    out = tmp_path / "wb"
    summary = EpisodeRunner(load_config(SMOKE, {"wandb": True}), out, wandb_group="g1").run()
    assert summary is not None and list(out.glob("wandb/offline-run-*"))
    assert made[0].run.group == "g1"
    # Per-step tables of generated examples and of the student's errors.
    tables = {p.name.split("_")[0] for p in out.glob("wandb/offline-run-*/files/media/table/*/*")}
    assert tables == {"examples", "errors"}


def test_wandb_settings_from_the_config_reach_the_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    made = _spy_on_wandb(monkeypatch)
    wandb = {"project": "p1", "tags": ["a", "b"], "notes": "why", "mode": "offline"}
    config = load_config(SMOKE, {"wandb": wandb, "budget": 100})
    EpisodeRunner(config, tmp_path / "wb").run()
    run = made[0].run
    assert (run.project, tuple(run.tags), run.notes) == ("p1", ("a", "b"), "why")
    assert list((tmp_path / "wb").glob("wandb/offline-run-*"))
    with pytest.raises(ConfigError, match="wandb"):
        load_config(SMOKE, {"wandb": {"projekt": "p1"}})


def test_wandb_is_offline_without_an_api_key(monkeypatch, tmp_path):
    from teachgym.experiments.tracking import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_wandb_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    from teachgym.errors import MissingDependency

    with pytest.raises(MissingDependency, match=r'pip install -e "\.\[wandb\]"'):
        _run(tmp_path, "nowb", wandb=True)
    assert not (tmp_path / "nowb").exists()  # a failed start leaves nothing behind


def _spy_on_wandb(monkeypatch) -> list:
    from teachgym.experiments import tracking

    made: list = []
    real_init = tracking.WandbTracker.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(tracking.WandbTracker, "__init__", init)
    return made


def test_wandb_run_is_finished_when_a_slice_stops_early(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    made = _spy_on_wandb(monkeypatch)
    out = tmp_path / "slice"
    assert EpisodeRunner(load_config(SMOKE, {"wandb": True}), out).run(max_new_steps=2) is None
    assert len(made) == 1 and made[0].run._is_finished and wandb.run is None
    summary = EpisodeRunner.from_run_dir(out).run()
    assert summary is not None
    assert len(made) == 2 and made[1].run._is_finished and wandb.run is None
    # Both sessions wrote to the same wandb run (its id comes from the run directory).
    assert made[0].run.id == made[1].run.id


def test_wandb_run_is_finished_when_the_run_fails(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    made = _spy_on_wandb(monkeypatch)
    registry.register("teacher", "broken_for_test", _Broken)
    config = load_config(SMOKE, {"wandb": True, "teacher": "broken_for_test"})
    with pytest.raises(ValueError, match="finite"):
        EpisodeRunner(config, tmp_path / "fail").run()
    assert len(made) == 1 and made[0].run._is_finished and wandb.run is None


# -- resume from every state a crash inside a checkpoint swap can leave --------------
def _partial_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An uninterrupted run, and a run cut at step 4 with step 3's checkpoint kept aside."""
    whole, _ = _run(tmp_path, "whole")
    out = tmp_path / "cut"
    assert EpisodeRunner(load_config(SMOKE), out).run(max_new_steps=3) is None
    step3 = tmp_path / "step3"
    shutil.copytree(out / "checkpoint", step3)
    assert EpisodeRunner.from_run_dir(out).run(max_new_steps=1) is None
    return whole, out, step3


def _torn(path: Path) -> None:
    """A checkpoint directory whose write was cut short (no COMPLETE marker)."""
    path.mkdir()
    (path / "state.json").write_text('{"env": {"ste')


CRASH_STATES = {
    # Checkpointer.save: tmp written -> current renamed to old -> tmp renamed -> old removed.
    "tmp_torn": lambda out, step3: _torn(out / "checkpoint.tmp"),
    "tmp_complete_not_swapped": lambda out, step3: (
        (out / "checkpoint").rename(out / "checkpoint.tmp"),
        shutil.copytree(step3, out / "checkpoint"),
    ),
    "between_the_renames": lambda out, step3: (
        (out / "checkpoint").rename(out / "checkpoint.tmp"),
        shutil.copytree(step3, out / "checkpoint.old"),
    ),
    "old_not_removed": lambda out, step3: shutil.copytree(step3, out / "checkpoint.old"),
    "only_old_and_a_torn_tmp": lambda out, step3: (
        shutil.rmtree(out / "checkpoint"),
        shutil.copytree(step3, out / "checkpoint.old"),
        _torn(out / "checkpoint.tmp"),
    ),
}


@pytest.mark.parametrize("state", sorted(CRASH_STATES))
def test_resume_uses_the_newest_complete_checkpoint(state, tmp_path):
    whole, out, step3 = _partial_run(tmp_path)
    CRASH_STATES[state](out, step3)
    early = [(out / "data" / f"step_{k:04d}.jsonl").stat().st_mtime_ns for k in (1, 2, 3)]
    summary = EpisodeRunner.from_run_dir(out).run()
    assert summary is not None
    assert (out / "steps.jsonl").read_bytes() == (whole / "steps.jsonl").read_bytes()
    # It continued from a checkpoint (steps 1-3 were not redone), not from scratch.
    assert [(out / "data" / f"step_{k:04d}.jsonl").stat().st_mtime_ns for k in (1, 2, 3)] == early
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint"]
    # One timing row per step, none repeated by the replay.
    steps = [t["step"] for t in read_jsonl(out / "timings.jsonl")]
    assert steps == list(range(1, summary["steps"] + 1))


def test_wall_seconds_counts_every_session(tmp_path):
    out = tmp_path / "sliced"
    assert EpisodeRunner(load_config(SMOKE), out).run(max_new_steps=3) is None
    first = json.loads((out / "checkpoint" / "state.json").read_text())["elapsed"]
    summary = EpisodeRunner.from_run_dir(out).run()
    assert summary is not None
    later_steps = sum(t["total"] for t in read_jsonl(out / "timings.jsonl") if t["step"] > 3)
    assert summary["wall_seconds"] >= first + later_steps


_TASK_DRAWS: list[list[float]] = []


def _global_draw_task(**kwargs):
    """A user task that draws from the global generators while it is built."""
    import random

    import numpy as np
    import torch

    from teachgym.envs.tasks.arithmetic import ArithmeticTask

    _TASK_DRAWS.append([random.random(), float(np.random.rand()), float(torch.rand(1))])
    return ArithmeticTask(**kwargs)


def test_global_generators_are_seeded_before_components_are_built(tmp_path):
    import random

    import numpy as np
    import torch

    # The task is the first component the env builds.
    registry.register("task", "global_draws_for_test", _global_draw_task)
    _TASK_DRAWS.clear()
    for name in ("a", "b"):
        random.seed(99), np.random.seed(99), torch.manual_seed(99)  # whatever came before
        config = load_config(SMOKE, {"task": "global_draws_for_test", "seed": 3})
        EpisodeRunner(config, tmp_path / name).run(max_new_steps=0)
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    expected = [random.random(), float(np.random.rand()), float(torch.rand(1))]
    assert [expected, expected] == _TASK_DRAWS


def test_resume_with_another_thread_count_warns(tmp_path):
    out = tmp_path / "t"
    config = load_config(SMOKE, {"threads": 1})
    assert EpisodeRunner(config, out).run(max_new_steps=2) is None
    with pytest.warns(UserWarning, match="threads 1 -> 2"):
        EpisodeRunner.from_run_dir(out, threads=2).run(max_new_steps=1)
    # The recorded count is used when none is given, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EpisodeRunner.from_run_dir(out).run(max_new_steps=1)


def test_compare_never_mixes_episodes_of_two_configs(tmp_path, capsys):
    out = ["--out", str(tmp_path / "cmp")]
    base = ["--teachers", "uniform", "--seeds", "1"]
    assert main(["compare", str(SMOKE), "budget=200", *base, *out]) == 0
    [first] = (tmp_path / "cmp" / "uniform").glob("seed_0-*")
    assert main(["compare", str(SMOKE), "budget=300", *base, *out]) == 0
    # Trial directories are keyed by the config's fingerprint: a rerun with another
    # config runs new episodes beside the old ones, and the leaderboard has only the new.
    dirs = sorted((tmp_path / "cmp" / "uniform").glob("seed_0-*"))
    assert len(dirs) == 2 and first in dirs
    assert json.loads((first / "summary.json").read_text())["examples_used"] == 200
    [row] = json.loads((tmp_path / "cmp" / "episodes.json").read_text())
    assert row["examples_used"] == 300 and row["run_dir"] != f"uniform/{first.name}"


def test_a_trial_directory_holding_another_config_is_refused(tmp_path):
    from teachgym.experiments.sweep import plan_trials, run_trial_episode

    config = load_config(SMOKE)
    [trial] = plan_trials(config, ["uniform"], 1)
    run_dir = tmp_path / trial.dirname
    other = load_config(SMOKE, {"teacher": "uniform", "max_steps": 11})
    assert EpisodeRunner(other, run_dir).run(max_new_steps=2) is None
    with pytest.raises(RunError, match=r"max_steps: 11 -> 10"):
        run_trial_episode(trial, run_dir)


def test_import_teachgym_does_not_import_torch():
    code = (
        "import sys, teachgym, teachgym.envs, teachgym.agents, teachgym.experiments.stats\n"
        "import gymnasium as gym\n"
        "assert 'teachgym/SkillList-v0' in gym.registry\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_steps_jsonl_counts_examples_cut_at_the_students_length_limit(tmp_path):
    # Arithmetic prompts are 4 to 8 characters; a 3-token limit cuts every one of them.
    config = load_config(
        SMOKE, {"budget": 200, "student_kwargs.max_prompt_tokens": 3, "threads": 1}
    )
    EpisodeRunner(config, tmp_path / "run").run()
    rows = read_jsonl(tmp_path / "run" / "steps.jsonl")[1:]
    assert rows
    for row in rows:
        assert row["length_truncated"]["truncated_prompts"] == row["examples_accepted"]
    cut = [r["length_truncated"] for r in rows]
    assert all(c["truncated_completions"] == 0 for c in cut)
    # The episode's own `truncated` flag is not overwritten by the counts.
    assert all(isinstance(r["truncated"], bool) for r in rows)
