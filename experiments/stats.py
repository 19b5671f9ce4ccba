"""Small statistics for comparing teachers: AULC, 95% confidence intervals, leaderboards.

Plain Python (no numpy, no scipy) on purpose: the same inputs give the same numbers on every
machine, and a script that only reads results (``leaderboard.json``, ``steps.jsonl``) needs
nothing heavy: importing this module imports ``teachgym`` (gymnasium, numpy and pydantic, for
the env registrations) but not torch. The inputs are a handful of seeds and a few hundred
steps, so plain Python is fast enough.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "METRICS",
    "T_975",
    "aulc",
    "examples_to_target",
    "format_leaderboard",
    "leaderboard",
    "mean_ci95",
    "metric_key",
    "paired_differences",
    "paired_key",
    "t_quantile_975",
]

#: Two-sided 95% critical values of Student's t, i.e. the 0.975 quantile, for degrees of
#: freedom 1..30 (index 0 is df=1). Embedded because scipy is not a dependency; values are
#: the standard table, rounded to 4 decimals. Beyond df=30 :func:`t_quantile_975` uses the
#: normal value 1.96, which understates the interval by at most ~2% (t at df=31 is 2.040).
T_975: tuple[float, ...] = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip

_Z_975 = 1.96

LEADERBOARD_KEYS: tuple[str, ...] = (
    "teacher",
    "aulc_mean",
    "aulc_ci95",
    "final_test_mean",
    "final_test_ci95",
    "examples_mean",
    "seeds",
)
"""Keys of a leaderboard row, in order; part of the ``leaderboard.json`` contract (DESIGN.md)."""


def aulc(values: Sequence[float]) -> float:
    """Area under a validation-accuracy learning curve, normalised to [0, 1].

    ``values[0]`` is the baseline accuracy right after ``reset`` and ``values[i]`` the accuracy
    after step ``i``. The result is the mean of the trapezoids between consecutive points, i.e.
    the trapezoidal area divided by the number of steps. Normalising by length is what makes
    the number comparable between episodes of different lengths (a budget that runs out after
    5 steps vs. one after 50) and keeps it on the same scale as accuracy itself: a curve that is
    constant at ``a`` has AULC ``a``. Rewarding the area rather than the final value favours
    teachers that make the student good *early*, which is the point of a curriculum.

    A curve of length 1 (no step was taken) returns its only value.

    >>> aulc([0.0, 1.0])
    0.5
    >>> aulc([0.25, 0.25, 0.25])
    0.25
    >>> aulc([0.0, 0.5, 1.0])
    0.5
    >>> aulc([0.7])
    0.7
    """
    if len(values) == 0:
        raise ValueError("aulc() needs at least one value (the baseline after reset)")
    if len(values) == 1:
        return float(values[0])
    area = math.fsum((float(a) + float(b)) / 2.0 for a, b in itertools.pairwise(values))
    return area / (len(values) - 1)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (1.96 beyond df=30).

    >>> t_quantile_975(2)
    4.3027
    >>> t_quantile_975(100)
    1.96
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T_975[df - 1] if df <= len(T_975) else _Z_975


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% confidence interval for the mean, by Student's t.

    Student's t rather than the normal 1.96 because comparisons usually have 3 to 10 seeds,
    where the normal interval is far too narrow (with 3 seeds the t factor is 4.30, not 1.96).
    The half-width is ``t(0.975, n-1) * s / sqrt(n)`` with ``s`` the sample standard deviation
    (``n - 1`` in the denominator).

    A confidence interval needs at least two seeds: with one value the half-width is
    ``float('nan')`` (unknown), not 0.0, so that a single-seed result is never mistaken for an
    exact one. Plots draw no band and tables print ``n/a`` for it.

    >>> mean, hw = mean_ci95([1.0, 2.0, 3.0])
    >>> mean, round(hw, 4)
    (2.0, 2.4842)
    >>> mean_ci95([0.5, 0.5])
    (0.5, 0.0)
    >>> mean_ci95([0.3])
    (0.3, nan)
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95() needs at least one value")
    xs = [float(v) for v in values]
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, float("nan")
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, t_quantile_975(n - 1) * math.sqrt(var) / math.sqrt(n)


_ROW_KEYS = ("teacher", "seed", "aulc", "final_test_accuracy", "examples_used")

#: Leaderboard metrics: the episode-row key each reads, and whether higher is better.
METRICS: dict[str, tuple[str, bool]] = {
    "aulc": ("aulc", True),
    "final_test": ("final_test_accuracy", True),
    "examples_to_target": ("examples_to_target", False),
}


def examples_to_target(points: Sequence[tuple[float, float]], target: float) -> tuple[float, bool]:
    """Examples trained on when validation accuracy first reached ``target``.

    ``points`` are ``(examples_total, val_accuracy)`` per step, baseline first.
    An episode that never reached it counts its last ``examples_total`` (a
    lower bound on what it would have needed) and ``False``: a teacher that
    never gets there is never ranked above one that does at the same cost.

    >>> examples_to_target([(0, 0.1), (100, 0.5), (200, 0.95)], 0.9)
    (200.0, True)
    >>> examples_to_target([(0, 0.1), (100, 0.5)], 0.9)
    (100.0, False)
    """
    if not points:
        raise ValueError("examples_to_target() needs at least one point")
    for examples, accuracy in points:
        if accuracy >= target:
            return float(examples), True
    return float(points[-1][0]), False


def leaderboard(rows: Sequence[Mapping[str, Any]], metric: str = "aulc") -> list[dict[str, Any]]:
    """Aggregate per-episode summaries into one row per teacher, best AULC first.

    Each input row is one (teacher, seed) episode with keys ``teacher``, ``seed``, ``aulc``,
    ``final_test_accuracy`` and ``examples_used`` (extra keys are ignored, so whole
    ``summary.json`` dicts plus teacher/seed can be passed). Output rows have exactly the keys
    of :data:`LEADERBOARD_KEYS`, which ``leaderboard.json`` promises. Ranking is by mean AULC
    because it rewards both learning fast and ending high; ties fall back to the teacher name
    so the order is deterministic. A repeated (teacher, seed) pair raises ``ValueError``,
    because counting one episode twice would silently shrink its confidence interval.

    >>> rows = [
    ...     {"teacher": "random", "seed": 0, "aulc": 0.4, "final_test_accuracy": 0.5,
    ...      "examples_used": 100},
    ...     {"teacher": "random", "seed": 1, "aulc": 0.6, "final_test_accuracy": 0.7,
    ...      "examples_used": 300},
    ...     {"teacher": "greedy", "seed": 0, "aulc": 0.8, "final_test_accuracy": 0.9,
    ...      "examples_used": 200},
    ... ]
    >>> board = leaderboard(rows)
    >>> [(r["teacher"], r["seeds"]) for r in board]
    [('greedy', 1), ('random', 2)]
    >>> board[1]["aulc_mean"], board[1]["examples_mean"]
    (0.5, 200.0)
    """
    groups = _episodes_by_teacher(rows)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    board = [_board_row(teacher, episodes) for teacher, episodes in groups.items()]
    key = metric_key(metric, board)
    sign = -1.0 if METRICS[metric][1] else 1.0
    board.sort(key=lambda r: (sign * r[key], r["teacher"]))
    return board


def _episodes_by_teacher(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The episode rows grouped by teacher; a row lacking a key or a repeated
    (teacher, seed) pair is a ``ValueError``."""
    if len(rows) == 0:
        raise ValueError("leaderboard() needs at least one episode row")
    groups: dict[str, list[Mapping[str, Any]]] = {}
    seen: set[tuple[str, Any]] = set()
    for i, row in enumerate(rows):
        missing = [k for k in _ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"leaderboard row {i} lacks keys {missing}: {dict(row)!r}")
        teacher = str(row["teacher"])
        key = (teacher, row["seed"])
        if key in seen:
            raise ValueError(f"duplicate episode for teacher {teacher!r}, seed {row['seed']!r}")
        seen.add(key)
        groups.setdefault(teacher, []).append(row)
    return groups


def _board_row(teacher: str, episodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One teacher's leaderboard row (see :data:`LEADERBOARD_KEYS`)."""
    aulc_mean, aulc_ci = mean_ci95([e["aulc"] for e in episodes])
    test_mean, test_ci = mean_ci95([e["final_test_accuracy"] for e in episodes])
    examples_mean = math.fsum(float(e["examples_used"]) for e in episodes) / len(episodes)
    row = {
        "teacher": teacher,
        "aulc_mean": aulc_mean,
        "aulc_ci95": aulc_ci,
        "final_test_mean": test_mean,
        "final_test_ci95": test_ci,
        "examples_mean": examples_mean,
        "seeds": len(episodes),
    }
    if all(e.get("examples_to_target") is not None for e in episodes):
        mean, ci = mean_ci95([float(e["examples_to_target"]) for e in episodes])
        row["examples_to_target_mean"] = mean
        row["examples_to_target_ci95"] = ci
        row["target_reached"] = sum(bool(e.get("target_reached", True)) for e in episodes)
    return row


def metric_key(metric: str, board: Sequence[Mapping[str, Any]]) -> str:
    """The leaderboard rows' key of ``metric``'s mean (``..._mean``; ``..._ci95`` beside it)."""
    key = {"aulc": "aulc_mean", "final_test": "final_test_mean"}.get(
        metric, "examples_to_target_mean"
    )
    if any(key not in r for r in board):
        raise ValueError(f"the episodes have no {METRICS[metric][0]!r} to rank by {metric}")
    return key


def paired_key(metric: str) -> str:
    """The prefix of ``metric``'s difference in :func:`paired_differences`' rows
    (``..._mean`` and ``..._ci95``)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return {"aulc": "aulc_diff", "final_test": "final_test_diff"}.get(
        metric, "examples_to_target_diff"
    )


def _paired_row(
    ref: Mapping[Any, Mapping[str, Any]],
    episodes: Mapping[Any, Mapping[str, Any]],
    reference: str,
    teacher: str,
    metric: str,
) -> dict[str, Any]:
    """``reference - teacher`` over the seeds both ran (see :func:`paired_differences`)."""
    field, higher_better = METRICS[metric]
    seeds = sorted(set(ref) & set(episodes), key=str)
    aulc_d = [float(ref[s]["aulc"]) - float(episodes[s]["aulc"]) for s in seeds]
    test_d = [
        float(ref[s]["final_test_accuracy"]) - float(episodes[s]["final_test_accuracy"])
        for s in seeds
    ]
    aulc_mean, aulc_ci = mean_ci95(aulc_d)
    test_mean, test_ci = mean_ci95(test_d)
    metric_d = [float(ref[s][field]) - float(episodes[s][field]) for s in seeds]
    row = {
        "reference": reference,
        "teacher": teacher,
        "aulc_diff_mean": aulc_mean,
        "aulc_diff_ci95": aulc_ci,
        "final_test_diff_mean": test_mean,
        "final_test_diff_ci95": test_ci,
        "wins": sum((d > 0) if higher_better else (d < 0) for d in metric_d),
        "losses": sum((d < 0) if higher_better else (d > 0) for d in metric_d),
        "seeds": len(seeds),
    }
    if metric == "examples_to_target":
        mean, ci = mean_ci95(metric_d)
        row["examples_to_target_diff_mean"], row["examples_to_target_diff_ci95"] = mean, ci
    return row


def _pm(mean: float, ci: float, digits: int = 3) -> str:
    """``mean ± ci`` with a fixed number of digits; an unknown CI prints as ``n/a``."""
    ci_text = "n/a" if math.isnan(ci) else f"{ci:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci_text}"


def format_leaderboard(board: Sequence[Mapping[str, Any]]) -> str:
    """Render a :func:`leaderboard` as a plain-text table with aligned columns.

    Plain text (no rich markup) so the same string goes to a terminal, a log file and a
    README unchanged. Text columns are left-aligned, numbers right-aligned.

    >>> board = [{"teacher": "greedy", "aulc_mean": 0.8, "aulc_ci95": 0.05,
    ...           "final_test_mean": 0.9, "final_test_ci95": float("nan"),
    ...           "examples_mean": 200.0, "seeds": 3}]
    >>> print(format_leaderboard(board))
    rank  teacher           aulc   final test  examples  seeds
    1     greedy   0.800 ± 0.050  0.900 ± n/a       200      3
    """
    headers = ("rank", "teacher", "aulc", "final test", "examples", "seeds")
    right = (False, False, True, True, True, True)
    table: list[tuple[str, ...]] = [headers]
    for rank, row in enumerate(board, start=1):
        table.append(
            (
                str(rank),
                str(row["teacher"]),
                _pm(float(row["aulc_mean"]), float(row["aulc_ci95"])),
                _pm(float(row["final_test_mean"]), float(row["final_test_ci95"])),
                f"{float(row['examples_mean']):.0f}",
                str(int(row["seeds"])),
            )
        )
    widths = [max(len(line[c]) for line in table) for c in range(len(headers))]
    lines = []
    for line in table:
        cells = [
            cell.rjust(w) if r else cell.ljust(w)
            for cell, w, r in zip(line, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def paired_differences(
    rows: Sequence[Mapping[str, Any]], reference: str, metric: str = "aulc"
) -> list[dict[str, Any]]:
    """Per-seed differences ``reference - other`` for every other teacher, with 95% CIs.

    Teachers compared on the same seed start from the same student weights and are scored
    on the same validation and test problems, so most of the seed-to-seed spread (how long
    the student takes to "get" a skill) is shared. Differencing within a seed removes that
    shared part; the per-teacher intervals of :func:`leaderboard` keep it, so they can
    overlap while the paired interval lies clear of zero. Only seeds that both teachers ran
    are used. ``wins`` counts the seeds where the reference did better by ``metric`` (higher
    AULC or final test accuracy, fewer examples to the target), ``losses`` those where the
    other teacher did (ties are neither), and with ``examples_to_target`` the rows also hold
    its differences.

    >>> rows = [
    ...     {"teacher": "a", "seed": s, "aulc": 0.5 + 0.1 * s, "final_test_accuracy": 0.9}
    ...     for s in range(3)
    ... ] + [
    ...     {"teacher": "b", "seed": s, "aulc": 0.45 + 0.1 * s, "final_test_accuracy": 0.8}
    ...     for s in range(3)
    ... ]
    >>> [d] = paired_differences(rows, "a")
    >>> d["teacher"], round(d["aulc_diff_mean"], 3), round(d["aulc_diff_ci95"], 3)
    ('b', 0.05, 0.0)
    >>> d["wins"], d["losses"], d["seeds"]
    (3, 0, 3)
    >>> [e] = paired_differences(rows, "b")
    >>> e["wins"], e["losses"]
    (0, 3)
    """
    by_teacher: dict[str, dict[Any, Mapping[str, Any]]] = {}
    for row in rows:
        by_teacher.setdefault(str(row["teacher"]), {})[row["seed"]] = row
    if reference not in by_teacher:
        raise ValueError(f"reference teacher {reference!r} is not among {sorted(by_teacher)}")
    ref = by_teacher[reference]
    key = paired_key(metric) + "_mean"  # (refuses an unknown metric)
    higher_better = METRICS[metric][1]
    out = [
        _paired_row(ref, episodes, reference, teacher, metric)
        for teacher, episodes in by_teacher.items()
        if teacher != reference and set(ref) & set(episodes)
    ]
    sign = -1.0 if higher_better else 1.0
    out.sort(key=lambda r: (sign * r[key], r["teacher"]))
    return out
