"""The runner, the run directory, resume after SIGKILL, compare, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teachgym.config import ConfigError, default_config_path, load_config
from teachgym.experiments.cli import main
from teachgym.experiments.runner import EpisodeRunner, RunError, read_jsonl

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
    assert saved["steps"] == 6 and saved["examples_used"] <= 600
    assert len(read_jsonl(out / "timings.jsonl")) == 6


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
    assert summary is not None and summary["steps"] == 6
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
        assert set(row) == {
            "teacher",
            "aulc_mean",
            "aulc_ci95",
            "final_test_mean",
            "final_test_ci95",
            "examples_mean",
            "seeds",
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
    mtime = (tmp_path / "cmp" / "uniform" / "seed_0" / "summary.json").stat().st_mtime
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
    assert (tmp_path / "cmp" / "uniform" / "seed_0" / "summary.json").stat().st_mtime == mtime


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
        (["run", "missing.yaml"], "does not exist"),
        (["run", "seed"], None),
        (["compare", "--teachers", "uniform,nobody", "--seeds", "1"], "unknown teacher"),
    ],
)
def test_cli_errors_are_clear(argv, message, capsys, tmp_path):
    if argv == ["run", "seed"]:
        argv = ["run", str(SMOKE), "seed"]
        message = "unexpected argument 'seed'"
    code = main([*argv, "--out", str(tmp_path / "x")])
    assert code == 2
    assert message in capsys.readouterr().out.replace("\n", " ")


def test_config_overrides_nested_keys():
    cfg = load_config(None, {"student_kwargs.lr": 0.001, "task_kwargs.val_per_skill": 8})
    assert cfg.student_kwargs["lr"] == 0.001 and cfg.task_kwargs["val_per_skill"] == 8
    with pytest.raises(ConfigError, match="examples_per_step=7000 exceeds budget=6000"):
        load_config(None, {"budget": 6000, "examples_per_step": 7000})


def test_wandb_logs_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    out, summary = _run(tmp_path, "wb", wandb=True)
    assert summary is not None and list(out.glob("wandb/offline-run-*"))


def test_wandb_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(RuntimeError, match=r"teachgym\[wandb\]"):
        _run(tmp_path, "nowb", wandb=True)


def test_wandb_run_is_closed_when_a_slice_stops_early(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "slice"
    assert EpisodeRunner(load_config(SMOKE, {"wandb": True}), out).run(max_new_steps=2) is None
    summary = EpisodeRunner.from_run_dir(out).run()
    assert summary is not None and summary["steps"] == 6
