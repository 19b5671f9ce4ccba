"""A sweep's leaderboard by grid point: teachers as rows, grid points as columns.

A grid over the experiment (``--grid profile=default,unlearnable,...``) makes
every point a different experiment, so teachers are compared within a point
only, seed by seed (the same seed is the same initial student and the same
evaluation problems). Each cell is a teacher's metric at that point (mean ±
95% CI over seeds) and its paired gain over a baseline at the same point:
``uniform`` when the sweep ran it, else the point's leader. This is the
stress-test leaderboard (teachers x profiles); the sweep's flat leaderboard,
one row per label, is written beside it.

:func:`grid_report` computes it from ``episodes.json``'s rows; :func:`grid_markdown`
writes it as the Markdown table of ``grid.md`` (what the README shows) and
:func:`grid_table` as the console's table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from teachgym.experiments.stats import (
    leaderboard,
    mean_ci95,
    metric_key,
    paired_differences,
    paired_key,
)

__all__ = [
    "BASELINE",
    "grid_markdown",
    "grid_report",
    "grid_table",
    "group_by_point",
    "teachers_meet",
]

#: The teacher every other is compared with at each grid point, when the sweep ran it.
BASELINE = "uniform"

#: A cell's paired fields: gain over the reference (mean, 95% CI), the seeds where the
#: teacher did better, and the seeds paired.
_GAIN = ("gain_mean", "gain_ci95", "better", "paired_seeds")


def grid_report(
    rows: Sequence[Mapping[str, Any]], metric: str = "aulc", baseline: str = BASELINE
) -> dict[str, Any] | None:
    """Per grid point, each teacher's ``metric`` and paired gain over the point's reference.

    ``rows`` are episode rows with ``teacher_name``, ``point`` (the grid values as
    text, ``""`` without a grid), ``seed`` and the metric's field. ``None`` when no
    point has two teachers to compare (a grid over one teacher's options: the flat
    leaderboard already says everything). A gain is ``teacher - reference`` (for
    ``examples_to_target``, fewer is better, so a negative gain is a better teacher),
    over the seeds both ran; ``better`` counts the seeds where the teacher did better.

    >>> rows = [
    ...     {"teacher_name": t, "teacher": f"{t}[p={p}]", "point": f"p={p}", "seed": s,
    ...      "aulc": a + 0.1 * s, "final_test_accuracy": 0.9, "examples_used": 10}
    ...     for p, t, a in [(1, "uniform", 0.3), (1, "smart", 0.5), (2, "uniform", 0.2),
    ...                     (2, "smart", 0.1)]
    ...     for s in range(3)
    ... ]
    >>> report = grid_report(rows)
    >>> [(p["point"], p["reference"]) for p in report["points"]]
    [('p=1', 'uniform'), ('p=2', 'uniform')]
    >>> [[(c["teacher"], round(c["gain_mean"], 3), c["better"]) for c in p["cells"]]
    ...  for p in report["points"]]
    [[('smart', 0.2, 3), ('uniform', 0.0, 0)], [('uniform', 0.0, 0), ('smart', -0.1, 0)]]
    """
    diff = paired_key(metric)  # (refuses an unknown metric)
    by_point = group_by_point(rows)
    if not teachers_meet(by_point):
        return None
    points = []
    for point, group in by_point.items():
        named = [{**r, "teacher": r["teacher_name"]} for r in group]
        board = leaderboard(named, metric)
        mean_key = metric_key(metric, board)
        ci_key = mean_key.removesuffix("_mean") + "_ci95"
        names = [b["teacher"] for b in board]
        reference = baseline if baseline in names else names[0]
        pairs = {d["teacher"]: d for d in paired_differences(named, reference, metric)}
        cells = []
        for b in board:
            seeds = int(b["seeds"])
            cell = {
                "teacher": b["teacher"],
                "mean": float(b[mean_key]),
                "ci95": float(b[ci_key]),
                "seeds": seeds,
            }
            pair = pairs.get(b["teacher"])
            if b["teacher"] == reference:  # paired with itself: a gain of 0 on every seed
                gain = (0.0, mean_ci95([0.0] * seeds)[1], 0, seeds)
            elif pair is None:  # no seed in common with the reference
                gain = (float("nan"), float("nan"), 0, 0)
            else:  # paired_differences gives reference - teacher; a gain is the opposite
                mean, ci = pair[diff + "_mean"], pair[diff + "_ci95"]
                gain = (0.0 - mean, ci, pair["losses"], pair["seeds"])
            cells.append(cell | dict(zip(_GAIN, gain, strict=True)))
        points.append({"point": point, "reference": reference, "cells": cells})
    return {"metric": metric, "baseline": baseline, "points": points}


def group_by_point(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Episode rows by grid point (the grid values as text, ``""`` without a grid),
    points in the order they first appear."""
    by_point: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_point.setdefault(str(row.get("point", "")), []).append(row)
    return by_point


def teachers_meet(by_point: Mapping[str, Sequence[Mapping[str, Any]]]) -> bool:
    """Whether some grid point holds two teachers: then each point is an experiment
    of its own and teachers are compared within points only."""
    return any(len({r["teacher_name"] for r in group}) > 1 for group in by_point.values())


def _teachers(report: Mapping[str, Any]) -> list[str]:
    """Every teacher, ranked by its mean rank over the points (then by name)."""
    ranks: dict[str, list[int]] = {}
    for point in report["points"]:
        for i, cell in enumerate(point["cells"]):
            ranks.setdefault(cell["teacher"], []).append(i)
    return sorted(ranks, key=lambda t: (sum(ranks[t]) / len(ranks[t]), t))


def _cell(cell: Mapping[str, Any] | None, reference: str) -> str:
    if cell is None:
        return "-"
    text = _pm(cell["mean"], cell["ci95"])
    if cell["teacher"] == reference or cell["paired_seeds"] == 0:
        return text
    gain = _pm(cell["gain_mean"], cell["gain_ci95"], signed=True)
    return f"{text} ({gain}, {cell['better']}/{cell['paired_seeds']})"


def _pm(mean: float, ci: float, signed: bool = False) -> str:
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if ci != ci else f"{text} ± {ci:.3f}"


def _grid(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the table, as text."""
    header = ["teacher", *(p["point"] or "(no grid)" for p in report["points"])]
    rows = []
    for teacher in _teachers(report):
        cells = []
        for point in report["points"]:
            mine = next((c for c in point["cells"] if c["teacher"] == teacher), None)
            cells.append(_cell(mine, point["reference"]))
        rows.append([teacher, *cells])
    return header, rows


def _legend(report: Mapping[str, Any]) -> str:
    refs = sorted({p["reference"] for p in report["points"]})
    return (
        f"{report['metric']}: mean ± 95% CI over seeds (gain over {', '.join(refs)} at the same "
        f"point, paired by seed, mean ± 95% CI, and the seeds where the teacher did better)"
    )


def grid_markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table with a line saying what a cell holds."""
    header, rows = _grid(report)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join([*lines, "", _legend(report), ""])


def grid_table(report: Mapping[str, Any]) -> Table:
    """The report as the console's table."""
    header, rows = _grid(report)
    table = Table(title=f"by grid point: {escape(_legend(report))}")
    for i, col in enumerate(header):
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    return table
