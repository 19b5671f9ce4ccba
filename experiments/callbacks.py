"""The episode runner's callbacks: what a run directory records after every step
(:class:`RunRecorder`, :class:`Checkpointer`), what the console shows
(:class:`ProgressDisplay`, :class:`LLMFailureNotice`) and the wandb rows
(:class:`WandbCallback`).

:class:`~teachgym.experiments.runner.EpisodeRunner` puts them together for a run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from teachgym.agents.policies.base import teacher_stats
from teachgym.config import ExperimentConfig
from teachgym.errors import RunError
from teachgym.experiments.loop import Callback, Episode, EpisodeState, Transition
from teachgym.experiments.rundir import (
    PERF,
    STEPS,
    TIMINGS,
    RunDir,
    StepRecord,
    append_jsonl,
    write_jsonl,
)
from teachgym.experiments.tracking import WandbTracker
from teachgym.runtime import machine_fingerprint

__all__ = ["Checkpointer", "LLMFailureNotice", "ProgressDisplay", "RunRecorder", "WandbCallback"]


def _handle(callback: Callback) -> Episode:
    """The callback's :class:`Episode` handle; the runner's callbacks record a teachgym
    env's episode and have nothing to record without one."""
    if callback.episode is None:
        raise RunError(f"{type(callback).__name__} needs a teachgym env (an Episode handle)")
    return callback.episode


class RunRecorder(Callback):
    """``steps.jsonl``, ``timings.jsonl``, ``perf.jsonl`` (when the student reports its
    throughput), ``data/`` and ``predictions/`` of a run directory."""

    def __init__(self, run_dir: RunDir, rows: list[dict[str, Any]] | None = None) -> None:
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = list(rows or [])

    def on_start(self, env: Any, teacher: Any, observation: Any, info: dict[str, Any]) -> None:
        self.rows = [StepRecord.from_step(info).to_row()]
        write_jsonl(self.run_dir.file(STEPS), self.rows)
        self.run_dir.file(TIMINGS).write_text("")
        self.run_dir.file(PERF).unlink(missing_ok=True)
        self._write_perf(0, info)

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        info = transition.info
        record = StepRecord.from_step(
            info,
            reward=transition.reward,
            terminated=transition.terminated,
            truncated=transition.truncated,
            examples_total=self.rows[-1]["examples_total"] + info["examples_accepted"],
            # An LLM teacher's requests, tokens and fallbacks for the act behind this step.
            teacher_stats=teacher_stats(teacher),
        )
        row = record.to_row()
        self.rows.append(row)
        episode = _handle(self)
        write_jsonl(
            self.run_dir.data_file(record.step), (e.model_dump() for e in episode.last_examples)
        )
        write_jsonl(
            self.run_dir.predictions_file(record.step),
            (p.model_dump() for p in episode.last_predictions),
        )
        append_jsonl(self.run_dir.file(STEPS), row)
        append_jsonl(
            self.run_dir.file(TIMINGS),
            {"step": record.step, **dict(info["timings"]), "total": transition.seconds},
        )
        self._write_perf(record.step, info)

    def _write_perf(self, step: int, info: dict[str, Any]) -> None:
        if "perf" in info:
            append_jsonl(self.run_dir.file(PERF), {"step": step, **dict(info["perf"])})


class Checkpointer(Callback):
    """Swaps in a complete checkpoint after ``reset`` and after every step.

    See :meth:`RunDir.write_checkpoint`: a crash at any moment leaves at least
    one complete checkpoint. ``elapsed`` gives the run's wall time so far,
    across every process that worked on it.
    """

    def __init__(self, run_dir: RunDir, elapsed: Callable[[], float], threads: int) -> None:
        self.run_dir = run_dir
        self.elapsed = elapsed
        self.threads = threads

    def on_start(self, env: Any, teacher: Any, observation: Any, info: dict[str, Any]) -> None:
        self.save(env, teacher, info)

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        self.save(env, teacher, transition.info)

    def save(self, env: Any, teacher: Any, info: dict[str, Any]) -> None:
        episode = _handle(self)
        env_state = episode.state_dict()
        with self.run_dir.write_checkpoint(int(env_state["step"])) as tmp:
            episode.save_student(tmp / "student")
            state = {
                "env": env_state,
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


class ProgressDisplay(Callback):
    """A live progress bar: budget spent, step, validation accuracy.

    ``label`` names the episode (a comparison shows one bar per trial).
    """

    def __init__(self, console: Console | None, budget: int, label: str = "episode") -> None:
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
        self.label = escape(label)
        self.task_id: Any = None

    def _open(self, info: Mapping[str, Any]) -> None:
        self.progress.start()
        self.task_id = self.progress.add_task(
            self.label,
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


class LLMFailureNotice(Callback):
    """Says at once when every LLM request of a step failed, naming where and why.

    A generator whose server is down makes no data; the step then trains on
    nothing, and without this the only trace would be a counter in
    ``steps.jsonl``. The message names the component, the endpoint and the
    last error (from the client's ``last_failure``).
    """

    def __init__(self, console: Console | None) -> None:
        self.console = console
        #: Steps whose requests all failed, per component (for the end-of-run summary).
        self.failed_steps: dict[str, int] = {}
        self.last_failure: dict[str, str] = {}

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        stats = dict(transition.info.get("llm") or {})
        acted = teacher_stats(teacher) or {}
        if acted.get("llm"):
            stats["teacher"] = acted["llm"]
        for who, counts in stats.items():
            requests = int(counts.get("requests", 0))
            if requests == 0 or counts.get("ok", 0) > 0:
                continue
            why = counts.get("last_failure") or ", ".join(
                f"{k} {v}" for k, v in counts.get("failed", {}).items()
            )
            self.failed_steps[who] = self.failed_steps.get(who, 0) + 1
            self.last_failure[who] = why
            if self.console is not None:
                self.console.print(
                    f"[yellow]warning:[/yellow] step {transition.info['step']}: all {requests} "
                    f"LLM request(s) of the {who} failed: {escape(why)}",
                    highlight=False,
                )


class WandbCallback(Callback):
    """Logs each ``steps.jsonl`` row to wandb; the run is finished or closed on every exit."""

    def __init__(
        self,
        config: ExperimentConfig,
        out: Path,
        recorder: RunRecorder,
        group: str | None = None,
    ) -> None:
        self.tracker = WandbTracker(config, out, group=group)
        self.recorder = recorder

    def on_start(self, env: Any, teacher: Any, observation: Any, info: dict[str, Any]) -> None:
        self.tracker.log_row(self.recorder.rows[0], errors=info["errors"])

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        self.tracker.log_row(
            self.recorder.rows[-1],
            examples=_handle(self).last_examples,
            errors=transition.info["errors"],
        )

    def on_pause(self, env: Any, teacher: Any) -> None:
        self.tracker.close()  # the resuming job reopens the same wandb run

    def on_error(self, env: Any, teacher: Any, error: BaseException) -> None:
        self.tracker.close(exit_code=1)

    def finish(self, summary: dict[str, Any]) -> None:
        self.tracker.finish(summary)


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
