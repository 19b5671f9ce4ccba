"""The episode runner: one teacher, one env, one run directory, resumable.

A run directory is the unit of record. After every step the runner appends a
row to ``steps.jsonl``, writes that step's data and predictions, and swaps in a
fresh checkpoint (student weights, env state, teacher state, RNG states).
``resume`` drops any rows newer than the checkpoint and replays from it; since
every random draw is derived from saved state, the finished ``steps.jsonl`` is
byte-identical to an uninterrupted run. Timings, which differ run to run, are
kept apart in ``timings.jsonl`` for that reason.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from teachgym import registry
from teachgym.config import ExperimentConfig, build_config, dump_config
from teachgym.envs.base import TeacherEnv
from teachgym.experiments import plots
from teachgym.experiments.stats import aulc

CHECKPOINT = "checkpoint"


class RunError(RuntimeError):
    """A run directory cannot be used as asked (exists, missing, corrupt)."""


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything after it is replayed
    return rows


def _step_row(
    info: dict[str, Any], reward: float, terminated: bool, truncated: bool, examples_total: int
) -> dict[str, Any]:
    row = {
        "step": info["step"],
        "val_accuracy": info["accuracy"],
        "reward": reward,
        "skills": {s: v["accuracy"] for s, v in info["report"].items()},
        "examples_accepted": info.get("examples_accepted", 0),
        "examples_made": info.get("examples_made", 0),
        "examples_total": examples_total,
        "examples_used": info["examples_used"],
        "rejected": info.get("rejected", {}),
        "budget_left": info["budget_left"],
        "train_loss": info.get("train", {}).get("loss"),
        "terminated": terminated,
        "truncated": truncated,
    }
    if "test_accuracy" in info:
        row["test_accuracy"] = info["test_accuracy"]
        row["test_skills"] = {s: v["accuracy"] for s, v in info["test_report"].items()}
    return row


class EpisodeRunner:
    """Runs one episode of ``config`` into ``out_dir``.

    Args:
        config: the resolved experiment config.
        out_dir: the run directory; created if missing. A directory that
            already holds a run is refused unless ``resume`` is set.
        resume: continue from the directory's checkpoint.
        console: where progress and the final table go; ``None`` is silent.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        out_dir: str | Path,
        *,
        resume: bool = False,
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.resume = resume
        self.console = console

    # -- public -----------------------------------------------------------
    @classmethod
    def from_run_dir(cls, run_dir: str | Path, console: Console | None = None) -> EpisodeRunner:
        """A runner that resumes the run in ``run_dir`` with its saved config."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise RunError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
        config = build_config(yaml.safe_load(cfg_path.read_text()))
        return cls(config, run_dir, resume=True, console=console)

    def run(self, max_new_steps: int | None = None) -> dict[str, Any] | None:
        """Run (or finish) the episode; returns the summary written to summary.json.

        ``max_new_steps`` stops after that many steps with the run left
        resumable (``None`` is returned): a time-boxed job can do a slice of an
        episode and a later job resumes it.
        """
        started = time.perf_counter()
        self._prepare_dir()
        env = gym.make(self.config.env, config=self.config)
        core: TeacherEnv = env.unwrapped  # type: ignore[assignment]
        teacher = registry.build(
            "teacher",
            self.config.teacher,
            env=env,
            seed=self.config.seed,
            **self.config.teacher_kwargs,
        )
        steps_path = self.out / "steps.jsonl"
        tracker = None
        if self.config.wandb:
            from teachgym.experiments.tracking import WandbTracker

            tracker = WandbTracker(self.config, self.out)
        elapsed_before = 0.0
        if self.resume and (self.out / CHECKPOINT).exists():
            obs, info, elapsed_before = self._load_checkpoint(env, core, teacher)
            rows = [r for r in read_jsonl(steps_path) if r["step"] <= core.state_dict()["step"]]
            _write_jsonl(steps_path, rows)
            done = bool(rows and (rows[-1]["terminated"] or rows[-1]["truncated"]))
        else:
            _seed_globals(self.config.seed)
            obs, info = env.reset(seed=self.config.seed)
            rows = [_step_row(info, 0.0, False, False, 0)]
            _write_jsonl(steps_path, rows)
            if tracker is not None:
                tracker.log_row(rows[0])
            (self.out / "timings.jsonl").write_text("")
            self._save_checkpoint(core, teacher, info, elapsed_before)
            done = False
        with self._progress() as progress:
            task_id = progress.add_task(
                "episode",
                total=self.config.budget,
                completed=self.config.budget - core.budget_left,
                acc=info["accuracy"],
                step=info["step"],
            )
            taken = 0
            while not done:
                if max_new_steps is not None and taken >= max_new_steps:
                    env.close()
                    if tracker is not None:
                        tracker.close()  # the resuming job reopens the same wandb run
                    return None
                taken += 1
                t0 = time.perf_counter()
                action = teacher.act(obs, info)
                obs, raw_reward, terminated, truncated, info = env.step(action)
                reward = float(raw_reward)
                teacher.update(obs, reward, terminated, truncated, info)
                done = terminated or truncated
                row = _step_row(
                    info,
                    reward,
                    terminated,
                    truncated,
                    rows[-1]["examples_total"] + info["examples_accepted"],
                )
                rows.append(row)
                self._write_step_files(core, info["step"])
                _append_jsonl(steps_path, row)
                if tracker is not None:
                    tracker.log_row(row)
                _append_jsonl(
                    self.out / "timings.jsonl",
                    {"step": info["step"], **info["timings"], "total": time.perf_counter() - t0},
                )
                elapsed_before += time.perf_counter() - t0
                self._save_checkpoint(core, teacher, info, elapsed_before)
                progress.update(
                    task_id,
                    completed=self.config.budget - core.budget_left,
                    acc=info["accuracy"],
                    step=info["step"],
                )
        env.close()
        summary = self._finish(rows, time.perf_counter() - started)
        if tracker is not None:
            tracker.finish(summary)
        return summary

    # -- directory and checkpoint ----------------------------------------
    def _prepare_dir(self) -> None:
        if self.resume:
            if not (self.out / "config.yaml").is_file():
                raise RunError(f"cannot resume: {str(self.out)!r} has no config.yaml")
            return
        if (self.out / "steps.jsonl").exists():
            raise RunError(
                f"{str(self.out)!r} already holds a run; resume it with "
                f"`teachgym run --resume {self.out}` or choose another --out"
            )
        for sub in ("data", "predictions"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(dump_config(self.config))

    def _write_step_files(self, core: TeacherEnv, step: int) -> None:
        _write_jsonl(
            self.out / "data" / f"step_{step:04d}.jsonl",
            (e.model_dump() for e in core.last_examples),
        )
        _write_jsonl(
            self.out / "predictions" / f"step_{step:04d}.jsonl",
            (p.model_dump() for p in core.last_predictions),
        )

    def _save_checkpoint(
        self, core: TeacherEnv, teacher: Any, info: dict[str, Any], elapsed: float
    ) -> None:
        """Write the checkpoint beside the old one, then swap, so a crash at any
        moment leaves one complete checkpoint."""
        tmp = self.out / (CHECKPOINT + ".tmp")
        old = self.out / (CHECKPOINT + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        core.student.save(tmp / "student")
        state = {
            "env": core.state_dict(),
            "teacher": teacher.state_dict(),
            "info": _jsonable(info),
            "elapsed": elapsed,
            "rng": {
                "python": _jsonable(random.getstate()),
                "numpy": _jsonable(np.random.get_state(legacy=False)),
            },
        }
        (tmp / "state.json").write_text(json.dumps(state))
        torch.save(torch.get_rng_state(), tmp / "torch_rng.pt")
        current = self.out / CHECKPOINT
        if current.exists():
            shutil.rmtree(old, ignore_errors=True)
            current.rename(old)
        tmp.rename(current)
        shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(
        self, env: gym.Env, core: TeacherEnv, teacher: Any
    ) -> tuple[Any, dict[str, Any], float]:
        ckpt = self.out / CHECKPOINT
        if not (ckpt / "state.json").is_file():
            old = self.out / (CHECKPOINT + ".old")
            if not (old / "state.json").is_file():
                raise RunError(f"no complete checkpoint in {str(self.out)!r}")
            ckpt = old
        state = json.loads((ckpt / "state.json").read_text())
        env.reset(seed=self.config.seed)  # builds episode structures; then overwritten
        core.student.load(ckpt / "student")
        core.load_state_dict(state["env"])
        teacher.load_state_dict(state["teacher"])
        random.setstate(_tuplify(state["rng"]["python"]))
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(torch.load(ckpt / "torch_rng.pt", weights_only=True))
        return core._observation(), state["info"], float(state["elapsed"])

    # -- output -------------------------------------------------------------
    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("budget {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("step {task.fields[step]}"),
            TextColumn("val acc {task.fields[acc]:.3f}"),
            TimeElapsedColumn(),
            console=self.console or Console(quiet=True),
            transient=False,
        )

    def _finish(self, rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
        last = rows[-1]
        curve = [r["val_accuracy"] for r in rows]
        summary = {
            "env": self.config.env,
            "teacher": self.config.teacher,
            "seed": self.config.seed,
            "final_val_accuracy": last["val_accuracy"],
            "final_test_accuracy": last.get("test_accuracy"),
            "final_test_skills": last.get("test_skills", {}),
            "aulc": aulc(curve),
            "examples_used": last["examples_total"],
            "steps": last["step"],
            "wall_seconds": wall,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        plots.plot_learning_curve(rows, self.out / "learning_curve.png")
        plots.plot_skill_heatmap(rows, self.out / "skills_heatmap.png")
        if self.console is not None:
            self.console.print(steps_table(rows))
            self.console.print(
                f"final val accuracy {summary['final_val_accuracy']:.3f}, test accuracy "
                f"{summary['final_test_accuracy']:.3f}, AULC {summary['aulc']:.3f}, "
                f"{summary['examples_used']} examples, {wall:.1f} s -> {self.out}"
            )
        return summary


def steps_table(rows: list[dict[str, Any]]) -> Table:
    """The per-step table printed at the end of a run."""
    skills = list(rows[-1]["skills"])
    table = Table(title="per-step validation accuracy")
    table.add_column("step", justify="right")
    table.add_column("examples", justify="right", min_width=8)
    table.add_column("val acc", justify="right", min_width=5)
    for s in skills:
        # "add/carry_3d" -> "add/" over "carry_3d": narrow columns, full names.
        head, sep, tail = s.rpartition("/")
        table.add_column(f"{head}{sep}\n{tail}" if sep else s, justify="right")
    for r in rows:
        table.add_row(
            str(r["step"]),
            str(r["examples_total"]),
            f"{r['val_accuracy']:.3f}",
            *(f"{r['skills'].get(s, 0.0):.2f}" for s in skills),
        )
    return table


def _seed_globals(seed: int) -> None:
    """Seed the global generators too, for user components that use them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer | np.floating):
        return obj.item()
    return obj


def _tuplify(obj: Any) -> Any:
    return tuple(_tuplify(v) for v in obj) if isinstance(obj, list) else obj


def run_experiment(
    config: ExperimentConfig, out_dir: str | Path, console: Console | None = None
) -> dict[str, Any]:
    """Run one episode of ``config`` into ``out_dir`` (the library entry point)."""
    summary = EpisodeRunner(config, out_dir, console=console).run()
    assert summary is not None  # only run(max_new_steps=...) stops early
    return summary


def resume_experiment(run_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Finish the run in ``run_dir`` from its last checkpoint."""
    summary = EpisodeRunner.from_run_dir(run_dir, console=console).run()
    assert summary is not None
    return summary
