"""Sweeps: teachers x seeds x a grid of config values, one episode per trial.

``teachgym sweep`` runs the trials as Ray Tune trials, side by side as the
cluster's resources allow (this machine, or the cluster at ``RAY_ADDRESS``);
``teachgym compare`` runs the same trials one after another in this process,
every core to one episode, and needs no Ray. Both write the same directory:

```
<out>/sweep.yaml                      what was asked (resume reads it)
<out>/<label>/seed_<k>-<fingerprint>/ one run directory per trial
<out>/episodes.json                   one row per trial (AULC, test accuracy, ...)
<out>/leaderboard.json  paired.json  comparison.png  sweep.json
<out>/tune/                           Ray Tune's experiment state (sweep only)
```

A trial's directory name ends with the fingerprint of its resolved config,
so a rerun with another config gets new directories and a leaderboard only
ever aggregates episodes of the configs asked for. A trial is
``(label, seed)``: the label is the teacher, plus the grid values when there
is a grid (``curriculum[teacher_kwargs.gate=0.3]``), and the leaderboard has
a row per label.

In a Tune trial the episode reports every step to Tune with a checkpoint
(the run's own checkpoint and its ``steps.jsonl``), so a trial that fails is
retried from its last step (``--max-failures``), and ``teachgym sweep
--resume DIR`` finishes a sweep whose driver was killed. Every failure is
recorded in the trial's ``failures.jsonl`` and in ``sweep.json``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from teachgym import assembly, registry
from teachgym.config import (
    ExperimentConfig,
    build_config,
    config_diff,
    fingerprint,
    is_teacher_path,
    parse_cli_overrides,
    read_yaml,
)
from teachgym.distributed import check_feasible, connect, role_bundles, runtime_env_for
from teachgym.errors import ConfigError, RunError, RunFailed
from teachgym.experiments.loop import Callback, Transition
from teachgym.experiments.reports import (
    SESSIONS_FILE,
    leaderboard_table,
    paired_table,
    write_reports,
)
from teachgym.experiments.rundir import ATTEMPTS, FAILURES, RunDir
from teachgym.experiments.runner import EpisodeRunner, resolve_config
from teachgym.experiments.stats import METRICS

SPEC_FILE = "sweep.yaml"

__all__ = [
    "SweepSpec",
    "Trial",
    "compare_teachers",
    "leaderboard_table",
    "paired_table",
    "parse_grid",
    "plan_trials",
    "resume_sweep",
    "run_sweep",
    "trial_resources",
]


# -- what to run ------------------------------------------------------------------
def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["teacher_kwargs.gate=0.3,0.5"]`` -> ``{"teacher_kwargs.gate": [0.3, 0.5]}``.

    Values are read as YAML, like ``key=value`` overrides.

    >>> parse_grid(["teacher_kwargs.gate=0.3,0.5", "budget=600"])
    {'teacher_kwargs.gate': [0.3, 0.5], 'budget': [600]}
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r} is not of the form key=v1,v2,...")
        if key in ("teacher", "seed"):
            raise ConfigError(f"--grid {key}: use --teachers and --seeds for that")
        grid[key] = [parse_cli_overrides([f"x={v}"])["x"] for v in values.split(",") if v.strip()]
        if not grid[key]:
            raise ConfigError(f"--grid {item!r} has no values")
    return grid


@dataclass(frozen=True)
class Trial:
    """One episode of a sweep: a label (teacher and grid values), a seed, a resolved config."""

    label: str
    seed: int
    config: ExperimentConfig
    #: The teacher's name alone, and the grid point's values as text (``""`` without a
    #: grid): what the by-point leaderboard groups by (:mod:`~.grid_report`).
    teacher: str = ""
    point: str = ""

    @property
    def dirname(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.=,-]+", "_", self.label).strip("_")
        return f"{slug}/seed_{self.seed}-{fingerprint(self.config)[:8]}"


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep was asked to do; saved as ``sweep.yaml`` so ``--resume`` can redo it."""

    config: ExperimentConfig
    teachers: list[str]
    seeds: int
    grid: dict[str, list[Any]]
    max_failures: int = 2
    #: What ranks the leaderboard (a key of :data:`~teachgym.experiments.stats.METRICS`).
    metric: str = "aulc"
    #: The val accuracy ``examples_to_target`` counts the examples to.
    target: float = 0.9

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if not 0.0 < self.target <= 1.0:
            raise ConfigError(f"--target must be in (0, 1], got {self.target}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(
            {
                "config": self.config.model_dump(mode="json"),
                "teachers": self.teachers,
                "seeds": self.seeds,
                "grid": self.grid,
                "max_failures": self.max_failures,
                "metric": self.metric,
                "target": self.target,
            },
            sort_keys=False,
        )

    @classmethod
    def from_yaml(cls, text: str, where: str = SPEC_FILE) -> SweepSpec:
        data = read_yaml(text, where)
        if not isinstance(data, dict) or "config" not in data:
            raise RunError(f"{where} is not a sweep spec")
        return cls(
            config=build_config(data["config"]),
            teachers=list(data["teachers"]),
            seeds=int(data["seeds"]),
            grid=dict(data.get("grid") or {}),
            max_failures=int(data.get("max_failures", 2)),
            metric=str(data.get("metric", "aulc")),
            target=float(data.get("target", 0.9)),
        )


def plan_trials(
    config: ExperimentConfig,
    teachers: Sequence[str],
    seeds: int,
    grid: Mapping[str, Sequence[Any]] | None = None,
) -> list[Trial]:
    """Every (teacher, grid point, seed), in that order, with configs validated now.

    Names, options and values of every trial are checked before any episode
    runs (:func:`teachgym.assembly.check_config`), so a typo, or a grid key
    that one of the teachers does not take, fails in a second instead of
    after hours of work.
    """
    if not teachers:
        raise ConfigError("--teachers needs at least one teacher name")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    for name in teachers:
        if not is_teacher_path(name):  # a saved teacher's directory is checked when built
            registry.resolve("teacher", name)
    grid = dict(grid or {})
    keys = list(grid)
    trials = []
    for teacher in teachers:
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            values_text = ",".join(f"{k}={v}" for k, v in point.items())
            label = f"{teacher}[{values_text}]" if point else teacher
            for seed in range(seeds):
                cfg = build_config(config, {**point, "teacher": teacher, "seed": seed})
                if seed == 0:  # seeds differ only by seed: check each (teacher, point) once
                    try:
                        assembly.check_config(cfg)
                    except ConfigError as err:
                        raise ConfigError(f"trial {label}: {err}") from None
                trials.append(Trial(label, seed, resolve_config(cfg), teacher, values_text))
    return trials


# -- one trial --------------------------------------------------------------------
def run_trial_episode(
    trial: Trial,
    run_dir: Path,
    callbacks: Sequence[Callback] = (),
    group: str | None = None,
    console: Console | None = None,
) -> tuple[dict[str, Any], bool]:
    """The summary of ``trial``'s episode in ``run_dir`` (read back, resumed or run), and
    whether it was read back from an earlier run (cached).

    A directory that holds an episode of another config is refused, naming
    the keys that differ (with fingerprinted names this means the directory
    was edited by hand): reusing it would put a different experiment in the
    leaderboard, and overwriting it would lose one. A trial that trained on
    nothing still counts (its summary says so); the console says it at once.
    """
    directory = RunDir(run_dir)
    label = f"{trial.label} seed={trial.seed}"
    resume = False
    if directory.has_config():
        saved = directory.read_config()
        if fingerprint(saved) != fingerprint(trial.config):
            diff = "; ".join(config_diff(saved, trial.config))
            raise RunError(
                f"{str(run_dir)!r} holds an episode of another config ({diff}); "
                f"choose another --out, or delete that directory to rerun it"
            )
        summary = directory.summary()
        if summary is not None:
            return summary, True
        resume = directory.holds_run()
    runner = EpisodeRunner(
        trial.config,
        run_dir,
        resume=resume,
        callbacks=callbacks,
        wandb_group=group,
        console=console,
        label=label,
    )
    try:
        summary = runner.run()
    except RunFailed as err:
        if console is not None:
            console.print(f"[yellow]warning:[/yellow] {escape(label)}: {escape(str(err))}")
        summary = directory.summary()
        if summary is None:
            raise
    assert summary is not None
    return summary, False


# -- Ray Tune ---------------------------------------------------------------------
def trial_resources(config: ExperimentConfig) -> tuple[list[dict[str, float]], str]:
    """A trial's placement-group bundles and strategy.

    The first (head) bundle is the trial process, which runs the env and the
    teacher and, with ``backend: local``, the student too: it gets the
    episode's ``threads`` CPUs and the student's GPUs. With ``backend: ray``
    the head bundle is empty and the student, generator and evaluation
    actors get the bundles after it (``teachgym.distributed.place`` puts them
    there, in this order).
    """
    strategy = "PACK" if config.resources.placement == "colocate" else "SPREAD"
    if config.backend == "local":
        head: dict[str, float] = {"CPU": float(config.threads or 1)}
        if config.resources.student.num_gpus:
            head["GPU"] = float(config.resources.student.num_gpus)
        return [head], strategy
    return [{}] + [r.bundle for r in role_bundles(config) if r.bundle], strategy


class TuneReporter(Callback):
    """Reports each step to Tune with a checkpoint: the run's checkpoint and its rows."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = RunDir(run_dir)

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        from ray import tune

        info = transition.info
        metrics = {
            "step": info["step"],
            "val_accuracy": info["accuracy"],
            "reward": transition.reward,
            "budget_left": info["budget_left"],
            "examples_accepted": info["examples_accepted"],
            # Not "done": that key tells Tune to stop the trial.
            "episode_done": transition.done,
        }
        with tempfile.TemporaryDirectory() as tmp:
            self.run_dir.export_resumable(Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def tune_trainable(params: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one trial runs one episode."""
    import ray
    from ray import tune

    # Tune's per-checkpoint log lines would drown the episode's own output.
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    point = params["point"]
    trial = Trial(point["label"], int(point["seed"]), build_config(point["config"]))
    run_dir = Path(params["sweep_dir"]) / trial.dirname
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt = {
        "started": time.time(),
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
    }
    with (run_dir / ATTEMPTS).open("a") as f:
        f.write(json.dumps(attempt) + "\n")
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            RunDir(run_dir).import_resumable(Path(directory))
    try:
        group = Path(params["sweep_dir"]).name
        summary, cached = run_trial_episode(trial, run_dir, [TuneReporter(run_dir)], group=group)
    except Exception as err:  # SystemExit / KeyboardInterrupt are Tune stopping the trial
        failure = {
            "time": time.time(),
            "node": attempt["node"],
            "error": type(err).__name__,
            "message": str(err)[:2000],
            "traceback": traceback.format_exc()[-8000:],
        }
        with (run_dir / FAILURES).open("a") as f:
            f.write(json.dumps(failure) + "\n")
        raise
    tune.report({**{k: v for k, v in summary.items() if _scalar(v)}, "cached": cached})


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) or value is None


def _trial_of(tune_config: Mapping[str, Any]) -> Trial:
    point = tune_config["point"]
    return Trial(point["label"], int(point["seed"]), build_config(point["config"]))


def _tune_callbacks(quiet: bool, total: int) -> list[Any]:
    """A line per step of a running trial, and per finished or failed trial (Tune's own
    console output is off).

    Tune pickles its callbacks with the experiment state, so this one holds
    nothing but numbers and prints with ``print``.
    """
    from ray.tune import Callback as TuneCallback

    class Printer(TuneCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.done = 0

        def _line(self, trial: Any, what: str) -> None:
            if not quiet:
                t = _trial_of(trial.config)
                print(f"[{self.done}/{total}] {t.label} seed={t.seed} {what}", flush=True)

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            if quiet or "episode_done" not in result:
                return
            t = _trial_of(trial.config)
            budget = t.config.budget
            used = budget - int(result["budget_left"])
            print(
                f"    {t.label} seed={t.seed}: step {result['step']}, val acc "
                f"{result['val_accuracy']:.3f}, budget {used}/{budget}",
                flush=True,
            )

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self.done += 1
            result = trial.last_result or {}
            what = "finished"
            if result.get("cached"):
                what += " (cached: read back from an earlier run)"
            elif "aulc" in result:
                what += f": AULC {result['aulc']:.3f}"
            self._line(trial, what)

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self._line(trial, "failed (see its failures.jsonl)")

    return [Printer()]


def _run_tune(
    out: Path,
    spec: SweepSpec,
    trials: list[Trial],
    resume: bool,
    console: Console | None,
    max_concurrent: int | None = None,
) -> None:
    # A checkpoint per step is the point (exact resume); don't warn about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    connect(runtime_env_for(t.config for t in trials))
    from ray import tune

    bundles, strategy = trial_resources(trials[0].config)
    check_feasible(
        {f"a trial (bundle {i})": b for i, b in enumerate(bundles) if b}, "teachgym sweep"
    )
    trainable = tune.with_resources(
        tune_trainable, tune.PlacementGroupFactory(bundles, strategy=strategy)
    )
    # Tune builds a metrics table of its trials when it restores a sweep and when it
    # ends, and warns about trials it has no result files for (those that finished
    # before a resume): teachgym reads its own run directories instead, so that table
    # and its warnings are noise here.
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis.level
    analysis.setLevel(logging.ERROR)
    try:
        _fit(tune, out, spec, trials, trainable, resume, console, max_concurrent)
    finally:
        analysis.setLevel(level)


def _fit(
    tune: Any,
    out: Path,
    spec: SweepSpec,
    trials: list[Trial],
    trainable: Any,
    resume: bool,
    console: Console | None,
    max_concurrent: int | None,
) -> None:
    tune_dir = out / "tune"
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        tuner = tune.Tuner.restore(
            str(tune_dir),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
        )
    else:
        shutil.rmtree(tune_dir, ignore_errors=True)
        points = [
            {"label": t.label, "seed": t.seed, "config": t.config.model_dump(mode="json")}
            for t in trials
        ]
        tuner = tune.Tuner(
            trainable,
            param_space={"sweep_dir": str(out.resolve()), "point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(
                trial_dirname_creator=lambda t: _trial_of(t.config).dirname.replace("/", "-"),
                reuse_actors=False,
                max_concurrent_trials=max_concurrent,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(out.resolve()),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=_tune_callbacks(console is None, len(trials)),
            ),
        )
    tuner.fit()


# -- the sweep --------------------------------------------------------------------
def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    executor: str = "tune",
    resume: bool = False,
    console: Console | None = None,
    max_concurrent: int | None = None,
) -> list[dict[str, Any]]:
    """Run every trial of ``spec`` into ``out_dir`` and write the reports; returns the board.

    ``executor="tune"`` runs trials as Ray Tune trials (side by side, at most
    ``max_concurrent`` at once if given, else as many as resources allow);
    ``"serial"`` runs them in this process one after another (what
    ``teachgym compare`` does). Finished trials are read back, not rerun.
    """
    if executor not in ("tune", "serial"):
        raise ValueError(f"executor must be 'tune' or 'serial', got {executor!r}")
    out = Path(out_dir).resolve()  # Tune reads a relative storage path as a bad URI
    trials = plan_trials(spec.config, spec.teachers, spec.seeds, spec.grid)
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC_FILE).write_text(spec.to_yaml())
    with (out / SESSIONS_FILE).open("a") as f:
        f.write(json.dumps({"started": time.time(), "pid": os.getpid(), "resume": resume}) + "\n")
    if executor == "serial":
        _run_serial(out, trials, console)
    else:
        _run_tune(out, spec, trials, resume, console, max_concurrent)
    return write_reports(out, trials, console, metric=spec.metric, target=spec.target)


def _run_serial(out: Path, trials: Sequence[Trial], console: Console | None) -> None:
    """``teachgym compare``: trials one after another, each with its progress bar."""
    for i, trial in enumerate(trials):
        name = f"[{i + 1}/{len(trials)}] {trial.label} seed={trial.seed}"
        summary, cached = run_trial_episode(
            trial, out / trial.dirname, group=out.name, console=console
        )
        if console is not None:
            test = summary["final_test_accuracy"]
            result = f"AULC {summary['aulc']:.3f}, test " + (
                f"{test:.3f}" if test is not None else "n/a"
            )
            state = "cached: read back from an earlier run" if cached else "finished"
            console.print(f"{escape(name)} {state}: {result}", highlight=False)


def resume_sweep(
    out_dir: str | Path, *, executor: str = "tune", console: Console | None = None
) -> list[dict[str, Any]]:
    """Finish the sweep in ``out_dir`` (its driver was killed, or trials failed).

    Ray Tune restores the sweep as it was set up (its trials and its limit on
    concurrent trials); finished trials are read back.
    """
    out = Path(out_dir).resolve()
    spec_path = out / SPEC_FILE
    if not spec_path.is_file():
        raise RunError(f"cannot resume: {str(out)!r} has no {SPEC_FILE}")
    spec = SweepSpec.from_yaml(spec_path.read_text(), str(spec_path))
    return run_sweep(spec, out, executor=executor, resume=True, console=console)


def compare_teachers(
    config: ExperimentConfig,
    teachers: list[str],
    seeds: int,
    out_dir: str | Path,
    console: Console | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
    """``teachgym compare``: the sweep's trials, one after another in this process."""
    spec = SweepSpec(config, list(teachers), seeds, dict(grid or {}))
    return run_sweep(spec, out_dir, executor="serial", console=console)
