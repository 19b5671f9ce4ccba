"""A sweep's reports: ``episodes.json``, ``leaderboard.json``, ``paired.json``,
``comparison.png``, ``grid.json``/``grid.md`` (teachers x grid points, when a grid
point holds several teachers: :mod:`~teachgym.experiments.grid_report`) and
``sweep.json`` (what finished, what failed, what a stopped driver interrupted), and
the leaderboard's and paired comparison's tables.

The sweep (:mod:`teachgym.experiments.sweep`) runs the trials; this module
reads what their run directories hold.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from teachgym.errors import RunError
from teachgym.experiments import plots
from teachgym.experiments.grid_report import (
    grid_markdown,
    grid_report,
    grid_table,
    group_by_point,
    teachers_meet,
)
from teachgym.experiments.rundir import ATTEMPTS, FAILURES, STEPS, RunDir, read_jsonl
from teachgym.experiments.stats import examples_to_target, leaderboard, paired_differences

__all__ = ["SESSIONS_FILE", "leaderboard_table", "paired_table", "write_reports"]

#: One row per driver process that worked on the sweep (a resume adds one).
SESSIONS_FILE = "sessions.jsonl"


class TrialRef(Protocol):
    """What a report reads of a trial (:class:`~teachgym.experiments.sweep.Trial` is one)."""

    @property
    def label(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def dirname(self) -> str: ...

    @property
    def teacher(self) -> str: ...

    @property
    def point(self) -> str: ...


def _episode_row(trial: TrialRef, summary: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "teacher": trial.label,
        "teacher_name": trial.teacher or trial.label,
        "point": trial.point,
        "seed": trial.seed,
        "aulc": summary["aulc"],
        "final_test_accuracy": summary["final_test_accuracy"],
        "final_val_accuracy": summary["final_val_accuracy"],
        "examples_used": summary["examples_used"],
        "steps": summary["steps"],
        "run_dir": trial.dirname,
    }


def _trial_status(
    run_dir: Path, sessions: Sequence[float]
) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    """A trial's failures (retried ones included), the attempts a stopped driver
    interrupted, and its attempts.

    An attempt that wrote no failure and was followed by another attempt
    either lost its process (killed, out of memory, its node gone: recorded
    as ``WorkerLost``) or was stopped with the whole sweep when its driver
    stopped: then a driver session began between the two attempts, and the
    attempt is counted as interrupted, not as a failure of the trial.
    """
    failures = [
        {k: f[k] for k in ("error", "message", "node")} | {"time": f.get("time", 0.0)}
        for f in read_jsonl(run_dir / FAILURES)
    ]
    attempts = read_jsonl(run_dir / ATTEMPTS)
    interrupted = 0
    for this, after in itertools.pairwise(attempts):
        start, end = float(this["started"]), float(after["started"])
        if any(start <= float(f["time"]) <= end for f in failures):
            continue
        if any(start < t <= end for t in sessions):
            interrupted += 1
            continue
        failures.append(
            {
                "error": "WorkerLost",
                "message": "the trial's process died (killed, out of memory or its node "
                "lost) and Ray Tune started it again",
                "node": this["node"],
                "time": start,
            }
        )
    failures.sort(key=lambda f: float(f["time"]))
    return [{k: v for k, v in f.items() if k != "time"} for f in failures], interrupted, attempts


def write_reports(
    out: Path,
    trials: Sequence[TrialRef],
    console: Console | None = None,
    *,
    metric: str = "aulc",
    target: float = 0.9,
) -> list[dict[str, Any]]:
    """``episodes.json``, ``leaderboard.json``, ``paired.json``, ``comparison.png``, ``sweep.json``
    and, for a grid whose points hold several teachers, ``grid.json`` and ``grid.md``.

    The leaderboard is ranked by ``metric`` and the paired table compares the
    leader with each other label by it (within each grid point when the points
    hold several teachers: see :func:`_paired`). Trials that did not finish are left
    out of the leaderboard and listed in ``sweep.json`` with their failures;
    every trial's failures are listed, retried ones included, and the
    attempts that a stopped driver interrupted are counted apart.
    """
    sessions = [float(r["started"]) for r in read_jsonl(out / SESSIONS_FILE)]
    resumed_after = sessions[1:]  # a driver session after the first one is a resume
    found = _read_trials(out, trials, resumed_after, target)
    driver_stops = len(resumed_after)
    (out / "sweep.json").write_text(
        json.dumps(
            {
                "metric": metric,
                "target": target,
                "driver_stops": driver_stops,
                "trials": found.status,
            },
            indent=2,
        )
    )
    (out / "episodes.json").write_text(json.dumps(found.rows, indent=2))
    if not found.rows:
        raise RunError(f"no trial of the sweep in {str(out)!r} finished; see sweep.json")
    board = leaderboard(found.rows, metric)
    paired = _paired(found.rows, board, metric)
    (out / "leaderboard.json").write_text(json.dumps(_strict(board), indent=2))
    (out / "paired.json").write_text(json.dumps(_strict(paired), indent=2))
    plots.plot_comparison(found.curves, out / "comparison.png", examples=found.spent)
    grid = grid_report(found.rows, metric)
    if grid is not None:
        (out / "grid.json").write_text(json.dumps(_strict(grid), indent=2))
        (out / "grid.md").write_text(grid_markdown(grid))
    if console is not None:
        _print_summary(console, out, board, paired, found.status, metric, target, driver_stops)
        if grid is not None:
            console.print(grid_table(grid))
            console.print(f"by grid point -> {escape(str(out / 'grid.md'))}", highlight=False)
    return board


def _paired(
    rows: Sequence[Mapping[str, Any]], board: Sequence[Mapping[str, Any]], metric: str
) -> list[dict[str, Any]]:
    """The leader against each other label, seed by seed (same seed = same initial student).

    Where grid points hold several teachers, each point is its own experiment (a stress
    profile, a budget), so two labels at different points ran different episodes from
    the same seed and are not a pair: each point's leader is paired with the other
    teachers at that point only. A grid over one teacher's options (one teacher per
    point) changes only the teacher, and its labels are paired across points.
    """
    points = group_by_point(rows)
    if not teachers_meet(points):
        return paired_differences(rows, board[0]["teacher"], metric)
    paired: list[dict[str, Any]] = []
    for group in points.values():
        paired += paired_differences(group, leaderboard(group, metric)[0]["teacher"], metric)
    return paired


@dataclass
class _Trials:
    """What the trials' run directories hold, gathered for the reports."""

    #: One episode row per finished trial (see :func:`_episode_row`).
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: Per label, each finished trial's validation accuracy at each step...
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    #: ...and the examples it had spent by then.
    spent: dict[str, list[list[float]]] = field(default_factory=dict)
    #: One entry per trial, finished or not: ``sweep.json``'s ``trials``.
    status: list[dict[str, Any]] = field(default_factory=list)


def _read_trials(
    out: Path, trials: Sequence[TrialRef], resumed_after: Sequence[float], target: float
) -> _Trials:
    """Read every trial's run directory under ``out``; ``resumed_after``: when the
    driver sessions after the first began (see :func:`_trial_status`)."""
    found = _Trials()
    for trial in trials:
        run_dir = out / trial.dirname
        failures, interrupted, attempts = _trial_status(run_dir, resumed_after)
        summary = RunDir(run_dir).summary()
        found.status.append(
            {
                "teacher": trial.label,
                "seed": trial.seed,
                "run_dir": trial.dirname,
                "finished": summary is not None,
                "attempts": len(attempts),
                "failures": failures,
                "interrupted_by_driver": interrupted,
                "nodes": sorted({a["node"] for a in attempts}),
            }
        )
        if summary is None:
            continue
        steps = read_jsonl(run_dir / STEPS)
        row = _episode_row(trial, summary)
        row["examples_to_target"], row["target_reached"] = examples_to_target(
            [(float(r["examples_total"]), float(r["val_accuracy"])) for r in steps], target
        )
        found.rows.append(row)
        found.curves.setdefault(trial.label, []).append([r["val_accuracy"] for r in steps])
        found.spent.setdefault(trial.label, []).append([float(r["examples_total"]) for r in steps])
    return found


def _print_summary(
    console: Console,
    out: Path,
    board: list[dict[str, Any]],
    paired: list[dict[str, Any]],
    status: list[dict[str, Any]],
    metric: str,
    target: float,
    driver_stops: int,
) -> None:
    """The tables, what failed or stopped, and where the reports are."""
    unfinished = [s for s in status if not s["finished"]]
    console.print(leaderboard_table(board, metric, target))
    if paired:
        console.print(paired_table(paired, metric, target))
    failed = sum(len(s["failures"]) for s in status)
    if driver_stops:
        console.print(
            f"the sweep's driver stopped {driver_stops} time(s) and was resumed; "
            f"{sum(s['interrupted_by_driver'] for s in status)} trial attempt(s) it "
            f"interrupted went on from their checkpoints",
            highlight=False,
        )
    if failed or unfinished:
        console.print(
            f"[yellow]{failed} trial failure(s), {len(unfinished)} trial(s) unfinished: "
            f"see {escape(str(out / 'sweep.json'))}[/yellow]"
        )
    console.print(
        f"leaderboard -> {escape(str(out / 'leaderboard.json'))}, "
        f"paired -> {escape(str(out / 'paired.json'))}",
        highlight=False,
    )


_METRIC_TITLES = {
    "aulc": "AULC",
    "final_test": "final test accuracy",
    "examples_to_target": "examples to val accuracy {target:g}",
}


def leaderboard_table(
    board: list[dict[str, Any]], metric: str = "aulc", target: float = 0.9
) -> Table:
    ranked = _METRIC_TITLES[metric].format(target=target)
    table = Table(title=f"leaderboard, ranked by {ranked} (mean ± 95% CI over seeds)")
    columns = ["teacher", "AULC", "final test acc"]
    if metric == "examples_to_target":
        columns += [f"examples to {target:g}", "reached"]
    columns += ["examples", "seeds"]
    for col in columns:
        table.add_column(col, justify="left" if col == "teacher" else "right")
    for r in board:
        cells = [
            escape(r["teacher"]),
            _fmt(r["aulc_mean"], r["aulc_ci95"]),
            _fmt(r["final_test_mean"], r["final_test_ci95"]),
        ]
        if metric == "examples_to_target":
            cells += [
                _fmt(r["examples_to_target_mean"], r["examples_to_target_ci95"], digits=0),
                f"{r['target_reached']}/{r['seeds']}",
            ]
        cells += [f"{r['examples_mean']:.0f}", str(r["seeds"])]
        table.add_row(*cells)
    return table


def paired_table(paired: list[dict[str, Any]], metric: str = "aulc", target: float = 0.9) -> Table:
    """The paired differences as a table: one leader's title, or (pairs within grid
    points) a ``reference`` column naming each point's leader."""
    references = list(dict.fromkeys(r["reference"] for r in paired))
    ranked = _METRIC_TITLES[metric].format(target=target)
    leader = escape(references[0]) if len(references) == 1 else "each grid point's leader"
    table = Table(
        title=f"{leader} minus each teacher, paired by seed (mean ± 95% CI); wins by {ranked}"
    )
    columns = ["teacher", "Δ AULC", "Δ final test acc"]
    if len(references) > 1:
        columns.insert(0, "reference")
    if metric == "examples_to_target":
        columns.append(f"Δ examples to {target:g}")
    columns.append("wins")
    for col in columns:
        table.add_column(col, justify="left" if col == "teacher" else "right")
    for r in paired:
        cells = [escape(r["reference"])] if len(references) > 1 else []
        cells += [
            escape(r["teacher"]),
            _fmt(r["aulc_diff_mean"], r["aulc_diff_ci95"], signed=True),
            _fmt(r["final_test_diff_mean"], r["final_test_diff_ci95"], signed=True),
        ]
        if metric == "examples_to_target":
            cells.append(
                _fmt(
                    r["examples_to_target_diff_mean"],
                    r["examples_to_target_diff_ci95"],
                    signed=True,
                    digits=0,
                )
            )
        cells.append(f"{r['wins']}/{r['seeds']}")
        table.add_row(*cells)
    return table


def _fmt(mean: float, ci: float, signed: bool = False, digits: int = 3) -> str:
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return f"{text} ± {ci:.{digits}f}" if not math.isnan(ci) else text


def _strict(obj: Any) -> Any:
    """NaN (a one-seed CI) as null, so the JSON files are strict JSON."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
