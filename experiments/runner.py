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
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from teachgym import assembly
from teachgym.config import ExperimentConfig, dump_config
from teachgym.distributed import worker_failures
from teachgym.errors import RunError, RunFailed
from teachgym.experiments import plots
from teachgym.experiments.callbacks import (
    Checkpointer,
    LLMFailureNotice,
    ProgressDisplay,
    RunRecorder,
    WandbCallback,
)
from teachgym.experiments.loop import (
    Callback,
    EpisodeState,
    episode_of,
    run_episode,
)
from teachgym.experiments.rundir import (
    ALLOCATION,
    CHECKPOINT,
    COMPLETE,
    LEARNING_CURVE,
    SKILLS_HEATMAP,
    STEPS,
    SUMMARY,
    RunDir,
    read_jsonl,
)
from teachgym.experiments.stats import aulc
from teachgym.runtime import default_threads, machine_fingerprint

__all__ = [
    "CHECKPOINT",
    "COMPLETE",
    "Checkpointer",
    "EpisodeRunner",
    "LLMFailureNotice",
    "RunError",
    "RunRecorder",
    "read_jsonl",
    "resolve_config",
    "resume_experiment",
    "run_experiment",
    "steps_table",
]


def resolve_config(config: ExperimentConfig) -> ExperimentConfig:
    """The config as a run records it: ``threads`` filled in with the count used.

    The thread count changes a CPU run's floats, so it belongs to the record
    of what was run (and to the fingerprint that keeps ``compare`` from mixing
    episodes run differently).
    """
    if config.threads is not None:
        return config
    return config.model_copy(update={"threads": default_threads()})


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (see :meth:`RunDir.find_checkpoint`)."""
    return RunDir(run_dir).find_checkpoint()


# -- the runner -------------------------------------------------------------
class EpisodeRunner:
    """Runs one episode of ``config`` into ``out_dir``.

    Args:
        config: the experiment config (``threads`` is resolved and recorded).
        out_dir: the run directory; created if missing. A directory that
            already holds a run is refused unless ``resume`` is set; one
            whose start failed (no checkpoint) is replaced.
        resume: continue from the directory's newest complete checkpoint.
        console: where progress and the final table go; ``None`` is silent.
        threads: on resume, a thread count other than the recorded one (a
            warning says the floats will differ from an uninterrupted run).
        callbacks: more :class:`~teachgym.experiments.loop.Callback` objects,
            called after the run directory's own (a Tune trial reports with one).
        wandb_group: the wandb group of the run (a sweep's episodes share one).
        label: the name on the progress bar.

    The config is checked (:func:`teachgym.assembly.check_config`) and the
    env and teacher are built before anything is written; a start that fails
    before the first checkpoint leaves no run files behind.

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
        label: str = "episode",
    ) -> None:
        self.config = resolve_config(config)
        self.wandb_group = wandb_group
        self.out = Path(out_dir)
        self.run_dir = RunDir(self.out)
        self.resume = resume
        self.console = console
        self.threads = threads if threads is not None else self.config.threads
        assert self.threads is not None
        self.callbacks = list(callbacks)
        self.label = label
        self.restarts = 0
        self.skills: list[str] = []
        self.llm_notice = LLMFailureNotice(console)

    # -- public -----------------------------------------------------------
    @classmethod
    def from_run_dir(
        cls, run_dir: str | Path, console: Console | None = None, threads: int | None = None
    ) -> EpisodeRunner:
        """A runner that resumes the run in ``run_dir`` with its saved config."""
        directory = RunDir(run_dir)
        if not directory.has_config():
            raise RunError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
        if not directory.holds_run():
            raise RunError(
                f"cannot resume {str(run_dir)!r}: its start failed before the first checkpoint; "
                f"start it again with `teachgym run ... --out {run_dir}`"
            )
        return cls(directory.read_config(), run_dir, resume=True, console=console, threads=threads)

    def run(self, max_new_steps: int | None = None) -> dict[str, Any] | None:
        """Run (or finish) the episode; returns the summary written to summary.json.

        ``max_new_steps`` stops after that many steps with the run left
        resumable (``None`` is returned): a time-boxed job can do a slice of an
        episode and a later job resumes it. An episode that accepted no
        examples at all raises :class:`~teachgym.errors.RunFailed` after its
        summary is written.
        """
        assembly.check_config(self.config)
        if not self.resume and self.run_dir.holds_run():
            raise RunError(
                f"{str(self.out)!r} already holds a run; resume it with "
                f"`teachgym run --resume {self.out}` or choose another --out"
            )
        call_start = time.perf_counter()
        elapsed_at_call: float | None = None
        while True:
            try:
                summary = self._run_once(max_new_steps, call_start, elapsed_at_call)
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
                continue
            if summary is not None and summary["examples_used"] == 0:
                raise RunFailed(self._nothing_trained())
            return summary

    def _nothing_trained(self) -> str:
        """One line: the episode accepted no examples, and why."""
        rejected: dict[str, int] = {}
        made = 0
        for row in self.run_dir.rows():
            made += int(row.get("examples_made", 0))
            for reason, n in row.get("rejected", {}).items():
                rejected[reason] = rejected.get(reason, 0) + int(n)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda x: -x[1]))
        notice = self.llm_notice
        llm = "; ".join(
            f"every LLM request of the {who} failed in {n} step(s): {notice.last_failure[who]}"
            for who, n in notice.failed_steps.items()
        )
        return (
            f"the episode trained on nothing: 0 examples accepted of {made} made"
            + (f" (rejected: {reasons})" if reasons else "")
            + (f"; {llm}" if llm else "")
            + f"; see {self.out / STEPS}"
        )

    def _run_once(
        self, max_new_steps: int | None, call_start: float, elapsed_at_call: float | None
    ) -> dict[str, Any] | None:
        ckpt = self.run_dir.find_checkpoint() if self.resume else None
        if self.resume and ckpt is None:
            raise RunError(f"cannot resume {str(self.out)!r}: it has no complete checkpoint")
        saved = json.loads((ckpt / "state.json").read_text()) if ckpt is not None else None
        if saved is not None and elapsed_at_call is None:
            self._warn_if_machine_differs(saved.get("machine", {}))
        if elapsed_at_call is None:
            elapsed_at_call = float(saved["elapsed"]) if saved is not None else 0.0
        self._elapsed_at_call = elapsed_at_call
        config = self.config.model_copy(update={"threads": self.threads})
        # Process state first (threads, global seeds), so every construction is seeded.
        assembly.prepare_process(config)
        created = False
        env = gym.make(config.env, config=config)
        try:
            teacher = assembly.build_teacher(config, env)
            handle = episode_of(env)
            self.skills = list(handle.skills) if handle is not None else []

            def elapsed() -> float:
                return float(elapsed_at_call or 0.0) + time.perf_counter() - call_start

            if ckpt is not None and saved is not None:
                state, rows = self._resume_from(env, teacher, ckpt, saved)
            else:
                state, rows = None, []
                self.run_dir.create(dump_config(self.config))
                created = True
            recorder = RunRecorder(self.run_dir, rows)
            tracker = (
                WandbCallback(config, self.out, recorder, self.wandb_group)
                if config.wandb_settings is not None
                else None
            )
            callbacks = self._callbacks(config, recorder, tracker, elapsed)
            result = run_episode(
                env,
                teacher,
                callbacks,
                seed=config.seed,
                resume=state,
                max_new_steps=max_new_steps,
            )
        except BaseException:
            # A start that failed before its first checkpoint leaves nothing to resume:
            # remove its files, so the same command can simply be run again.
            if created and not self.run_dir.holds_run():
                self.run_dir.discard()
            raise
        finally:
            env.close()
        if not result.finished:
            return None
        summary = self._finish(recorder.rows, elapsed())
        if tracker is not None:
            tracker.finish(summary)
        return summary

    def _resume_from(
        self, env: gym.Env, teacher: Any, ckpt: Path, saved: dict[str, Any]
    ) -> tuple[EpisodeState, list[dict[str, Any]]]:
        """Env, teacher and RNGs restored from ``ckpt``; the run's rows up to its step."""
        ckpt = self.run_dir.adopt(ckpt)
        state = self._restore(env, teacher, ckpt, saved)
        step = int(saved["env"]["step"])
        rows = self.run_dir.truncate(step)
        self._say_resumed(step, rows)
        return EpisodeState(state.observation, state.info, done=bool(saved["env"]["done"])), rows

    def _callbacks(
        self,
        config: ExperimentConfig,
        recorder: RunRecorder,
        tracker: WandbCallback | None,
        elapsed: Callable[[], float],
    ) -> list[Callback]:
        """The run's own callbacks (records, checkpoints, progress, notices), then the user's."""
        callbacks: list[Callback] = [
            recorder,
            Checkpointer(self.run_dir, elapsed, self.threads),
            ProgressDisplay(self.console, config.budget, self.label),
            self.llm_notice,
        ]
        if tracker is not None:
            callbacks.append(tracker)
        return callbacks + list(self.callbacks)

    def _say_resumed(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self.console is None:
            return
        used = rows[-1]["examples_total"] if rows else 0
        self.console.print(
            f"resuming {escape(str(self.out))} from its checkpoint after step {step} "
            f"({used}/{self.config.budget} examples used)",
            highlight=False,
        )

    def _restore(self, env: gym.Env, teacher: Any, ckpt: Path, state: dict[str, Any]) -> Any:
        episode = episode_of(env)
        if episode is None:
            raise RunError(f"cannot resume on {type(env).__name__}: it has no Episode handle")
        env.reset(seed=self.config.seed)  # builds episode structures; then overwritten
        episode.load_student(ckpt / "student")
        episode.load_state_dict(state["env"])
        teacher.load_state_dict(state["teacher"])
        random.setstate(_tuplify(state["rng"]["python"]))
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(torch.load(ckpt / "torch_rng.pt", weights_only=True))
        return EpisodeState(episode.observe(), state["info"])

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
        self.run_dir.file(SUMMARY).write_text(json.dumps(summary, indent=2))
        plots.plot_learning_curve(rows, self.run_dir.file(LEARNING_CURVE), skills=self.skills)
        plots.plot_skill_heatmap(rows, self.run_dir.file(SKILLS_HEATMAP), skills=self.skills)
        plots.plot_allocation(rows, self.run_dir.file(ALLOCATION), skills=self.skills)
        if self.console is not None:
            self.console.print(steps_table(rows, self.skills))
            test = summary["final_test_accuracy"]
            self.console.print(
                f"final val accuracy {summary['final_val_accuracy']:.3f}, test accuracy "
                + (f"{test:.3f}" if test is not None else "n/a")
                + f", AULC {summary['aulc']:.3f}, {summary['examples_used']} examples, "
                f"{wall:.1f} s -> {escape(str(self.out))}",
                highlight=False,
            )
        return summary


def steps_table(rows: list[dict[str, Any]], skills: Sequence[str] | None = None) -> Table:
    """The per-step table printed at the end of a run, skill columns in ``skills`` order
    (the env's; ``steps.jsonl`` stores them sorted)."""
    skills = list(skills) if skills else list(rows[-1]["skills"])
    table = Table(title="per-step validation accuracy")
    table.add_column("step", justify="right")
    table.add_column("examples", justify="right", min_width=8)
    table.add_column("val acc", justify="right", min_width=5)
    for s in skills:
        # "add/carry_3d" -> "add/" over "carry_3d": narrow columns, full names.
        head, sep, tail = s.rpartition("/")
        table.add_column(escape(f"{head}{sep}\n{tail}" if sep else s), justify="right")
    for r in rows:
        table.add_row(
            str(r["step"]),
            str(r["examples_total"]),
            f"{r['val_accuracy']:.3f}",
            *(f"{r['skills'].get(s, 0.0):.2f}" for s in skills),
        )
    return table


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
