"""The episode runner: one teacher, one env, one run directory, resumable.

A run directory is the unit of record. The runner builds the env and the
teacher from the config and drives them with :func:`run_episode`; what it
records is done by callbacks: :class:`RunRecorder` appends a row to
``steps.jsonl`` after every step and writes that step's data and predictions,
:class:`Checkpointer` then swaps in a fresh checkpoint (student weights, env
state, teacher state, RNG states). ``resume`` picks the newest complete
checkpoint, drops any rows newer than it and replays from there; since every
random draw is derived from saved state, the finished ``steps.jsonl`` is
byte-identical to an uninterrupted run on the same machine and thread count.
Timings, which differ run to run, are kept apart in ``timings.jsonl`` for that
reason.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from teachgym import registry
from teachgym.config import ExperimentConfig, build_config, dump_config
from teachgym.distributed import worker_failures
from teachgym.errors import RunError
from teachgym.experiments import plots
from teachgym.experiments.loop import Callback, EpisodeState, Transition, run_episode
from teachgym.experiments.stats import aulc
from teachgym.runtime import default_threads, machine_fingerprint, seed_everything

CHECKPOINT = "checkpoint"
#: Written last into a checkpoint directory: without it the directory is a torn write.
COMPLETE = "COMPLETE"

__all__ = [
    "CHECKPOINT",
    "Checkpointer",
    "EpisodeRunner",
    "RunError",
    "RunRecorder",
    "find_checkpoint",
    "read_jsonl",
    "resolve_config",
    "resume_experiment",
    "run_experiment",
    "steps_table",
]


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


def resolve_config(config: ExperimentConfig) -> ExperimentConfig:
    """The config as a run records it: ``threads`` filled in with the count used.

    The thread count changes a CPU run's floats, so it belongs to the record
    of what was run (and to the fingerprint that keeps ``compare`` from mixing
    episodes run differently).
    """
    if config.threads is not None:
        return config
    return config.model_copy(update={"threads": default_threads()})


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
        "examples_by_skill": info.get("examples_by_skill", {}),
        "rejected": info.get("rejected", {}),
        "budget_left": info["budget_left"],
        "train_loss": info.get("train", {}).get("loss"),
        "terminated": terminated,
        "truncated": truncated,
    }
    if info.get("llm"):
        row["llm"] = dict(info["llm"])
    # Examples cut at the student's length limits (reported only when a limit is set).
    train = info.get("train", {})
    truncated = {k: int(v) for k, v in train.items() if k.startswith("truncated_")}
    if truncated:
        row["truncated"] = truncated
    if "test_accuracy" in info:
        row["test_accuracy"] = info["test_accuracy"]
        row["test_skills"] = {s: v["accuracy"] for s, v in info["test_report"].items()}
    return row


# -- callbacks ------------------------------------------------------------
class RunRecorder(Callback):
    """``steps.jsonl``, ``timings.jsonl``, ``data/`` and ``predictions/`` of a run directory."""

    def __init__(self, out: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.out = out
        self.rows: list[dict[str, Any]] = list(rows or [])

    def on_start(self, env: Any, teacher: Any, observation: Any, info: dict[str, Any]) -> None:
        self.rows = [_step_row(info, 0.0, False, False, 0)]
        _write_jsonl(self.out / "steps.jsonl", self.rows)
        (self.out / "timings.jsonl").write_text("")

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        info = transition.info
        row = _step_row(
            info,
            transition.reward,
            transition.terminated,
            transition.truncated,
            self.rows[-1]["examples_total"] + info["examples_accepted"],
        )
        # An LLM teacher's requests, tokens and fallbacks for the act behind this step.
        teacher_stats = getattr(teacher, "last_stats", None)
        if teacher_stats:
            row["llm"] = {**row.get("llm", {}), "teacher": teacher_stats}
        self.rows.append(row)
        core = env.unwrapped
        step = info["step"]
        _write_jsonl(
            self.out / "data" / f"step_{step:04d}.jsonl",
            (e.model_dump() for e in core.last_examples),
        )
        _write_jsonl(
            self.out / "predictions" / f"step_{step:04d}.jsonl",
            (p.model_dump() for p in core.last_predictions),
        )
        _append_jsonl(self.out / "steps.jsonl", row)
        _append_jsonl(
            self.out / "timings.jsonl",
            {"step": step, **dict(info["timings"]), "total": transition.seconds},
        )


class Checkpointer(Callback):
    """Swaps in a complete checkpoint after ``reset`` and after every step.

    The new checkpoint is written beside the current one and marked
    :data:`COMPLETE` last, then swapped in by two renames, so a crash at any
    moment leaves at least one complete checkpoint (:func:`find_checkpoint`
    finds the newest). ``elapsed`` gives the run's wall time so far, across
    every process that worked on it.
    """

    def __init__(self, out: Path, elapsed: Callable[[], float], threads: int) -> None:
        self.out = out
        self.elapsed = elapsed
        self.threads = threads

    def on_start(self, env: Any, teacher: Any, observation: Any, info: dict[str, Any]) -> None:
        self.save(env, teacher, info)

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        self.save(env, teacher, transition.info)

    def save(self, env: Any, teacher: Any, info: dict[str, Any]) -> None:
        import torch

        core = env.unwrapped
        tmp = self.out / (CHECKPOINT + ".tmp")
        old = self.out / (CHECKPOINT + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        core.student.save(tmp / "student")
        state = {
            "env": core.state_dict(),
            "teacher": teacher.state_dict(),
            "info": _jsonable(info),
            "elapsed": self.elapsed(),
            "machine": machine_fingerprint(self.threads),
            "rng": {
                "python": _jsonable(random.getstate()),
                "numpy": _jsonable(np.random.get_state(legacy=False)),
            },
        }
        (tmp / "state.json").write_text(json.dumps(state))
        torch.save(torch.get_rng_state(), tmp / "torch_rng.pt")
        _fsync_tree(tmp)
        (tmp / COMPLETE).write_text(str(state["env"]["step"]))
        current = self.out / CHECKPOINT
        if current.exists():
            shutil.rmtree(old, ignore_errors=True)
            current.rename(old)
        tmp.rename(current)
        shutil.rmtree(old, ignore_errors=True)


class ProgressDisplay(Callback):
    """A live progress bar: budget spent, step, validation accuracy."""

    def __init__(self, console: Console | None, budget: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("budget {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("step {task.fields[step]}"),
            TextColumn("val acc {task.fields[acc]:.3f}"),
            TimeElapsedColumn(),
            console=console or Console(quiet=True),
            transient=False,
            refresh_per_second=2,  # the bar moves once per step; don't steal the CPU
        )
        self.budget = budget
        self.task_id: Any = None

    def _open(self, info: Mapping[str, Any]) -> None:
        self.progress.start()
        self.task_id = self.progress.add_task(
            "episode",
            total=self.budget,
            completed=self.budget - info["budget_left"],
            acc=info["accuracy"],
            step=info["step"],
        )

    def on_start(self, env: Any, teacher: Any, observation: Any, info: dict[str, Any]) -> None:
        self._open(info)

    def on_resume(self, env: Any, teacher: Any, state: EpisodeState) -> None:
        self._open(state.info)

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        info = transition.info
        self.progress.update(
            self.task_id,
            completed=self.budget - info["budget_left"],
            acc=info["accuracy"],
            step=info["step"],
        )

    def on_end(self, env: Any, teacher: Any) -> None:
        self.progress.stop()

    def on_pause(self, env: Any, teacher: Any) -> None:
        self.progress.stop()

    def on_error(self, env: Any, teacher: Any, error: BaseException) -> None:
        self.progress.stop()


class WandbCallback(Callback):
    """Logs each ``steps.jsonl`` row to wandb; the run is finished or closed on every exit."""

    def __init__(
        self,
        config: ExperimentConfig,
        out: Path,
        recorder: RunRecorder,
        group: str | None = None,
    ) -> None:
        from teachgym.experiments.tracking import WandbTracker

        self.tracker = WandbTracker(config, out, group=group)
        self.recorder = recorder

    def on_start(self, env: Any, teacher: Any, observation: Any, info: dict[str, Any]) -> None:
        self.tracker.log_row(self.recorder.rows[0], errors=info["errors"])

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        self.tracker.log_row(
            self.recorder.rows[-1],
            examples=env.unwrapped.last_examples,
            errors=transition.info["errors"],
        )

    def on_pause(self, env: Any, teacher: Any) -> None:
        self.tracker.close()  # the resuming job reopens the same wandb run

    def on_error(self, env: Any, teacher: Any, error: BaseException) -> None:
        self.tracker.close(exit_code=1)

    def finish(self, summary: dict[str, Any]) -> None:
        self.tracker.finish(summary)


# -- checkpoints ----------------------------------------------------------
def _fsync_tree(path: Path) -> None:
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with item.open("rb") as f:
                os.fsync(f.fileno())


def _checkpoint_step(path: Path) -> int | None:
    """The env step a checkpoint directory holds, or None if it is incomplete."""
    marker = path / COMPLETE
    if not marker.is_file() or not (path / "state.json").is_file():
        return None
    try:
        return int(marker.read_text())
    except ValueError:
        return None


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, wherever a crash left it.

    A crash inside :meth:`Checkpointer.save` can leave the newest complete
    checkpoint as ``checkpoint/``, ``checkpoint.tmp/`` (written, not yet
    swapped in) or ``checkpoint.old/`` (the previous one, when the crash came
    between the two renames); incomplete directories are ignored.
    """
    best: tuple[int, Path] | None = None
    for name in (CHECKPOINT, CHECKPOINT + ".tmp", CHECKPOINT + ".old"):
        step = _checkpoint_step(run_dir / name)
        if step is not None and (best is None or step > best[0]):
            best = (step, run_dir / name)
    return None if best is None else best[1]


# -- the runner -------------------------------------------------------------
class EpisodeRunner:
    """Runs one episode of ``config`` into ``out_dir``.

    Args:
        config: the experiment config (``threads`` is resolved and recorded).
        out_dir: the run directory; created if missing. A directory that
            already holds a run is refused unless ``resume`` is set.
        resume: continue from the directory's newest complete checkpoint.
        console: where progress and the final table go; ``None`` is silent.
        threads: on resume, a thread count other than the recorded one (a
            warning says the floats will differ from an uninterrupted run).
        callbacks: more :class:`~teachgym.experiments.loop.Callback` objects,
            called after the run directory's own (a Tune trial reports with one).
        wandb_group: the wandb group of the run (a sweep's episodes share one).

    With ``backend: ray``, a worker that dies mid-episode (its process killed,
    its node lost) is replaced: the runner rebuilds the actors and resumes
    from the newest checkpoint, up to ``resources.max_restarts`` times, and
    the finished ``steps.jsonl`` is the one an uninterrupted run writes.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        out_dir: str | Path,
        *,
        resume: bool = False,
        console: Console | None = None,
        threads: int | None = None,
        callbacks: Sequence[Callback] = (),
        wandb_group: str | None = None,
    ) -> None:
        self.config = resolve_config(config)
        self.wandb_group = wandb_group
        self.out = Path(out_dir)
        self.resume = resume
        self.console = console
        self.threads = threads if threads is not None else self.config.threads
        assert self.threads is not None
        self.callbacks = list(callbacks)
        self.restarts = 0

    # -- public -----------------------------------------------------------
    @classmethod
    def from_run_dir(
        cls, run_dir: str | Path, console: Console | None = None, threads: int | None = None
    ) -> EpisodeRunner:
        """A runner that resumes the run in ``run_dir`` with its saved config."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise RunError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
        config = build_config(yaml.safe_load(cfg_path.read_text()))
        return cls(config, run_dir, resume=True, console=console, threads=threads)

    def run(self, max_new_steps: int | None = None) -> dict[str, Any] | None:
        """Run (or finish) the episode; returns the summary written to summary.json.

        ``max_new_steps`` stops after that many steps with the run left
        resumable (``None`` is returned): a time-boxed job can do a slice of an
        episode and a later job resumes it.
        """
        call_start = time.perf_counter()
        elapsed_at_call: float | None = None
        while True:
            try:
                return self._run_once(max_new_steps, call_start, elapsed_at_call)
            except worker_failures() as err:
                if self.restarts >= self.config.resources.max_restarts:
                    raise
                self.restarts += 1
                message = (
                    f"a Ray worker died ({type(err).__name__}); resuming from the newest "
                    f"checkpoint (restart {self.restarts} of {self.config.resources.max_restarts})"
                )
                warnings.warn(message, stacklevel=2)
                if self.console is not None:
                    self.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
                self.resume = True
                # Time lost since the last checkpoint still counts as the run's time.
                elapsed_at_call = self._elapsed_at_call

    def _run_once(
        self, max_new_steps: int | None, call_start: float, elapsed_at_call: float | None
    ) -> dict[str, Any] | None:
        self._prepare_dir()
        ckpt = find_checkpoint(self.out) if self.resume else None
        saved = json.loads((ckpt / "state.json").read_text()) if ckpt is not None else None
        if saved is not None and elapsed_at_call is None:
            self._warn_if_machine_differs(saved.get("machine", {}))
        if elapsed_at_call is None:
            elapsed_at_call = float(saved["elapsed"]) if saved is not None else 0.0
        self._elapsed_at_call = elapsed_at_call
        # Globals first, so that every component's construction is seeded.
        seed_everything(self.config.seed)
        config = self.config.model_copy(update={"threads": self.threads})
        env = gym.make(config.env, config=config)
        try:
            teacher = registry.build(
                "teacher",
                config.teacher,
                env=env,
                seed=config.seed,
                **config.component_kwargs("teacher"),
            )

            def elapsed() -> float:
                assert elapsed_at_call is not None
                return elapsed_at_call + time.perf_counter() - call_start

            state: EpisodeState | None = None
            rows: list[dict[str, Any]] = []
            if ckpt is not None and saved is not None:
                ckpt = self._adopt(ckpt)
                state = self._restore(env, teacher, ckpt, saved)
                step = int(saved["env"]["step"])
                rows = [r for r in read_jsonl(self.out / "steps.jsonl") if r["step"] <= step]
                _write_jsonl(self.out / "steps.jsonl", rows)
                timings = read_jsonl(self.out / "timings.jsonl")
                _write_jsonl(self.out / "timings.jsonl", [t for t in timings if t["step"] <= step])
                state = EpisodeState(state.observation, state.info, done=bool(saved["env"]["done"]))
            recorder = RunRecorder(self.out, rows)
            callbacks: list[Callback] = [
                recorder,
                Checkpointer(self.out, elapsed, self.threads),
                ProgressDisplay(self.console, config.budget),
            ]
            tracker = (
                WandbCallback(config, self.out, recorder, self.wandb_group)
                if config.wandb
                else None
            )
            if tracker is not None:
                callbacks.append(tracker)
            callbacks += self.callbacks
            result = run_episode(
                env,
                teacher,
                callbacks,
                seed=config.seed,
                resume=state,
                max_new_steps=max_new_steps,
            )
        finally:
            env.close()
        if not result.finished:
            return None
        summary = self._finish(recorder.rows, elapsed())
        if tracker is not None:
            tracker.finish(summary)
        return summary

    # -- directory and checkpoint ----------------------------------------
    def _prepare_dir(self) -> None:
        if self.resume:
            if not (self.out / "config.yaml").is_file():
                raise RunError(f"cannot resume: {str(self.out)!r} has no config.yaml")
            return
        if (self.out / "steps.jsonl").exists() or (self.out / "config.yaml").exists():
            raise RunError(
                f"{str(self.out)!r} already holds a run; resume it with "
                f"`teachgym run --resume {self.out}` or choose another --out"
            )
        for sub in ("data", "predictions"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(dump_config(self.config))

    def _adopt(self, ckpt: Path) -> Path:
        """Move the checkpoint being resumed into ``checkpoint/`` and drop the others."""
        current = self.out / CHECKPOINT
        if ckpt != current:
            shutil.rmtree(current, ignore_errors=True)
            ckpt.rename(current)
        for name in (CHECKPOINT + ".tmp", CHECKPOINT + ".old"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        return current

    def _restore(self, env: gym.Env, teacher: Any, ckpt: Path, state: dict[str, Any]) -> Any:
        import torch

        core = env.unwrapped
        env.reset(seed=self.config.seed)  # builds episode structures; then overwritten
        core.student.load(ckpt / "student")
        core.load_state_dict(state["env"])
        teacher.load_state_dict(state["teacher"])
        random.setstate(_tuplify(state["rng"]["python"]))
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(torch.load(ckpt / "torch_rng.pt", weights_only=True))
        return EpisodeState(core._observation(), state["info"])

    def _warn_if_machine_differs(self, saved: Mapping[str, Any]) -> None:
        """Warn when this session's floats will differ from an uninterrupted run's:
        another thread count than the config records, or another CPU or torch
        than the checkpoint was written with."""
        now = machine_fingerprint(self.threads)
        recorded = {**saved, "threads": self.config.threads}
        changed = [k for k in now if k in recorded and recorded[k] != now[k]]
        if changed:
            what = ", ".join(f"{k} {recorded[k]!r} -> {now[k]!r}" for k in changed)
            message = (
                f"resuming with a different {what}: the rest of the run will not be "
                f"bit-identical to an uninterrupted one"
            )
            warnings.warn(message, stacklevel=3)
            if self.console is not None:
                self.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    # -- output -------------------------------------------------------------
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


def resume_experiment(
    run_dir: str | Path, console: Console | None = None, threads: int | None = None
) -> dict[str, Any]:
    """Finish the run in ``run_dir`` from its newest complete checkpoint."""
    summary = EpisodeRunner.from_run_dir(run_dir, console=console, threads=threads).run()
    assert summary is not None
    return summary
