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
import math
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
from rich.table import Table

from teachgym import registry
from teachgym.config import (
    ExperimentConfig,
    build_config,
    config_diff,
    fingerprint,
    parse_cli_overrides,
)
from teachgym.errors import ConfigError, RunError
from teachgym.experiments import plots
from teachgym.experiments.loop import Callback, Transition
from teachgym.experiments.runner import (
    CHECKPOINT,
    EpisodeRunner,
    find_checkpoint,
    read_jsonl,
    resolve_config,
)
from teachgym.experiments.stats import leaderboard, paired_differences

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

    def to_yaml(self) -> str:
        return yaml.safe_dump(
            {
                "config": self.config.model_dump(mode="json"),
                "teachers": self.teachers,
                "seeds": self.seeds,
                "grid": self.grid,
                "max_failures": self.max_failures,
            },
            sort_keys=False,
        )

    @classmethod
    def from_yaml(cls, text: str) -> SweepSpec:
        data = yaml.safe_load(text)
        return cls(
            config=build_config(data["config"]),
            teachers=list(data["teachers"]),
            seeds=int(data["seeds"]),
            grid=dict(data.get("grid") or {}),
            max_failures=int(data.get("max_failures", 2)),
        )


def plan_trials(
    config: ExperimentConfig,
    teachers: Sequence[str],
    seeds: int,
    grid: Mapping[str, Sequence[Any]] | None = None,
) -> list[Trial]:
    """Every (teacher, grid point, seed), in that order, with configs validated now.

    Names and values are checked before any episode runs, so a typo fails in
    a second instead of after hours of work.
    """
    if not teachers:
        raise ConfigError("--teachers needs at least one teacher name")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    for name in teachers:
        registry.resolve("teacher", name)
    grid = dict(grid or {})
    keys = list(grid)
    trials = []
    for teacher in teachers:
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            label = teacher
            if point:
                label += "[" + ",".join(f"{k}={v}" for k, v in point.items()) + "]"
            for seed in range(seeds):
                cfg = build_config(config, {**point, "teacher": teacher, "seed": seed})
                trials.append(Trial(label, seed, resolve_config(cfg)))
    return trials


# -- one trial --------------------------------------------------------------------
def run_trial_episode(
    trial: Trial, run_dir: Path, callbacks: Sequence[Callback] = (), group: str | None = None
) -> dict[str, Any]:
    """The summary of ``trial``'s episode in ``run_dir``: read back, resumed or run.

    A directory that holds an episode of another config is refused, naming
    the keys that differ (with fingerprinted names this means the directory
    was edited by hand): reusing it would put a different experiment in the
    leaderboard, and overwriting it would lose one.
    """
    saved_path = run_dir / "config.yaml"
    if saved_path.exists():
        saved = build_config(yaml.safe_load(saved_path.read_text()))
        if fingerprint(saved) != fingerprint(trial.config):
            diff = "; ".join(config_diff(saved, trial.config))
            raise RunError(
                f"{str(run_dir)!r} holds an episode of another config ({diff}); "
                f"choose another --out, or delete that directory to rerun it"
            )
        summary_path = run_dir / "summary.json"
        if summary_path.exists():
            return dict(json.loads(summary_path.read_text()))
        runner = EpisodeRunner(
            trial.config, run_dir, resume=True, callbacks=callbacks, wandb_group=group
        )
    else:
        runner = EpisodeRunner(trial.config, run_dir, callbacks=callbacks, wandb_group=group)
    summary = runner.run()
    assert summary is not None
    return summary


def _episode_row(trial: Trial, summary: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "teacher": trial.label,
        "seed": trial.seed,
        "aulc": summary["aulc"],
        "final_test_accuracy": summary["final_test_accuracy"],
        "final_val_accuracy": summary["final_val_accuracy"],
        "examples_used": summary["examples_used"],
        "steps": summary["steps"],
        "run_dir": trial.dirname,
    }


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
    from teachgym.distributed import role_bundles

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
        self.run_dir = run_dir

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        from ray import tune

        info = transition.info
        metrics = {
            "step": info["step"],
            "val_accuracy": info["accuracy"],
            "reward": transition.reward,
            "budget_left": info["budget_left"],
            # Not "done": that key tells Tune to stop the trial.
            "episode_done": transition.done,
        }
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(self.run_dir / CHECKPOINT, Path(tmp) / CHECKPOINT)
            for name in ("steps.jsonl", "timings.jsonl", "config.yaml"):
                shutil.copy2(self.run_dir / name, Path(tmp) / name)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _restore_from_tune(checkpoint_dir: Path, run_dir: Path) -> None:
    """Seed ``run_dir`` from a Tune checkpoint unless it already holds a newer one.

    On shared storage the run directory survives a failure and is at least
    as new; on a node's local disk it may be gone, and Tune's copy is all
    there is.
    """
    ours = find_checkpoint(run_dir)
    ours_step = int((ours / "COMPLETE").read_text()) if ours is not None else -1
    theirs_step = int((checkpoint_dir / CHECKPOINT / "COMPLETE").read_text())
    if theirs_step <= ours_step:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "predictions"):
        (run_dir / sub).mkdir(exist_ok=True)
    shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)
    shutil.copytree(checkpoint_dir / CHECKPOINT, run_dir / CHECKPOINT)
    for name in ("steps.jsonl", "timings.jsonl", "config.yaml"):
        shutil.copy2(checkpoint_dir / name, run_dir / name)


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
    with (run_dir / "attempts.jsonl").open("a") as f:
        f.write(json.dumps(attempt) + "\n")
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            _restore_from_tune(Path(directory), run_dir)
    try:
        group = Path(params["sweep_dir"]).name
        summary = run_trial_episode(trial, run_dir, [TuneReporter(run_dir)], group=group)
    except Exception as err:  # SystemExit / KeyboardInterrupt are Tune stopping the trial
        failure = {
            "time": time.time(),
            "node": attempt["node"],
            "error": type(err).__name__,
            "message": str(err)[:2000],
            "traceback": traceback.format_exc()[-8000:],
        }
        with (run_dir / "failures.jsonl").open("a") as f:
            f.write(json.dumps(failure) + "\n")
        raise
    tune.report({k: v for k, v in summary.items() if _scalar(v)})


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) or value is None


def _trial_of(tune_config: Mapping[str, Any]) -> Trial:
    point = tune_config["point"]
    return Trial(point["label"], int(point["seed"]), build_config(point["config"]))


def _tune_callbacks(quiet: bool, total: int) -> list[Any]:
    """A line per finished or failed trial (Tune's own console output is off).

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

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self.done += 1
            self._line(trial, "finished")

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
    from teachgym.distributed import check_feasible, connect, runtime_env_for

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
    if executor == "serial":
        for i, trial in enumerate(trials):
            if console is not None:
                console.print(f"[{i + 1}/{len(trials)}] {trial.label} seed={trial.seed}")
            summary = run_trial_episode(trial, out / trial.dirname, group=out.name)
            if console is not None:
                console.print(
                    f"    AULC {summary['aulc']:.3f}  test {summary['final_test_accuracy']:.3f}"
                )
    else:
        _run_tune(out, spec, trials, resume, console, max_concurrent)
    return write_reports(out, trials, console)


def resume_sweep(
    out_dir: str | Path, *, executor: str = "tune", console: Console | None = None
) -> list[dict[str, Any]]:
    """Finish the sweep in ``out_dir`` (its driver was killed, or trials failed)."""
    out = Path(out_dir).resolve()
    spec_path = out / SPEC_FILE
    if not spec_path.is_file():
        raise RunError(f"cannot resume: {str(out)!r} has no {SPEC_FILE}")
    spec = SweepSpec.from_yaml(spec_path.read_text())
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


# -- reports ----------------------------------------------------------------------
def write_reports(
    out: Path, trials: Sequence[Trial], console: Console | None = None
) -> list[dict[str, Any]]:
    """``episodes.json``, ``leaderboard.json``, ``paired.json``, ``comparison.png``, ``sweep.json``.

    Trials that did not finish are left out of the leaderboard and listed in
    ``sweep.json`` with their failures; every trial's failures are listed,
    retried ones included.
    """
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[list[float]]] = {}
    status = []
    for trial in trials:
        run_dir = out / trial.dirname
        failures = [
            {k: f[k] for k in ("error", "message", "node")}
            for f in read_jsonl(run_dir / "failures.jsonl")
        ]
        attempts = read_jsonl(run_dir / "attempts.jsonl")
        summary_path = run_dir / "summary.json"
        finished = summary_path.exists()
        # An attempt whose process was killed (or whose node was lost) could not
        # write its failure; a later attempt is the evidence that it failed. (The
        # last attempt succeeded, is running, or wrote its own failure.)
        for attempt in attempts[len(failures) : max(len(failures), len(attempts) - 1)]:
            failures.append(
                {
                    "error": "WorkerLost",
                    "message": "the trial's process died (killed, out of memory or its node "
                    "lost) and Ray Tune started it again",
                    "node": attempt["node"],
                }
            )
        status.append(
            {
                "teacher": trial.label,
                "seed": trial.seed,
                "run_dir": trial.dirname,
                "finished": finished,
                "attempts": len(attempts),
                "failures": failures,
                "nodes": sorted({a["node"] for a in attempts}),
            }
        )
        if not finished:
            continue
        summary = json.loads(summary_path.read_text())
        rows.append(_episode_row(trial, summary))
        curves.setdefault(trial.label, []).append(
            [r["val_accuracy"] for r in read_jsonl(run_dir / "steps.jsonl")]
        )
    (out / "sweep.json").write_text(json.dumps({"trials": status}, indent=2))
    (out / "episodes.json").write_text(json.dumps(rows, indent=2))
    unfinished = [s for s in status if not s["finished"]]
    if not rows:
        raise RunError(f"no trial of the sweep in {str(out)!r} finished; see sweep.json")
    board = leaderboard(rows)
    # The leader against each other label, seed by seed (same seed = same initial student).
    paired = paired_differences(rows, board[0]["teacher"])
    (out / "leaderboard.json").write_text(json.dumps(_strict(board), indent=2))
    (out / "paired.json").write_text(json.dumps(_strict(paired), indent=2))
    plots.plot_comparison(curves, out / "comparison.png")
    if console is not None:
        console.print(leaderboard_table(board))
        if paired:
            console.print(paired_table(paired))
        failed = sum(len(s["failures"]) for s in status)
        if failed or unfinished:
            console.print(
                f"[yellow]{failed} trial failure(s), {len(unfinished)} trial(s) unfinished: "
                f"see {out / 'sweep.json'}[/yellow]"
            )
        console.print(f"leaderboard -> {out / 'leaderboard.json'}, paired -> {out / 'paired.json'}")
    return board


def leaderboard_table(board: list[dict[str, Any]]) -> Table:
    table = Table(title="leaderboard (mean ± 95% CI over seeds)")
    for col in ("teacher", "AULC", "final test acc", "examples", "seeds"):
        table.add_column(col, justify="left" if col == "teacher" else "right")
    for r in board:
        table.add_row(
            r["teacher"],
            _fmt(r["aulc_mean"], r["aulc_ci95"]),
            _fmt(r["final_test_mean"], r["final_test_ci95"]),
            f"{r['examples_mean']:.0f}",
            str(r["seeds"]),
        )
    return table


def paired_table(paired: list[dict[str, Any]]) -> Table:
    leader = paired[0]["reference"]
    table = Table(title=f"{leader} minus each teacher, paired by seed (mean ± 95% CI)")
    for col in ("teacher", "Δ AULC", "Δ final test acc", "wins"):
        table.add_column(col, justify="left" if col == "teacher" else "right")
    for r in paired:
        table.add_row(
            r["teacher"],
            _fmt(r["aulc_diff_mean"], r["aulc_diff_ci95"], signed=True),
            _fmt(r["final_test_diff_mean"], r["final_test_diff_ci95"], signed=True),
            f"{r['wins']}/{r['seeds']}",
        )
    return table


def _fmt(mean: float, ci: float, signed: bool = False) -> str:
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{text} ± {ci:.3f}" if not math.isnan(ci) else text


def _strict(obj: Any) -> Any:
    """NaN (a one-seed CI) as null, so the JSON files are strict JSON."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
