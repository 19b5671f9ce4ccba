"""PNG plots of a run (learning curve, per-skill heatmap) and of a teacher comparison.

Every function selects matplotlib's non-interactive "Agg" backend itself before importing
pyplot, so plotting works on headless machines (clusters, CI, Ray workers) without a display
and without the caller having to configure anything. Each function writes exactly one file,
creates its parent directory, and closes its figure so that long sweeps do not accumulate
open figures and leak memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teachgym.experiments.stats import mean_ci95

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_comparison", "plot_learning_curve", "plot_skill_heatmap"]

DPI = 120


def _pyplot() -> Any:
    """Import pyplot with the Agg backend, so no display is ever needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` as PNG to ``path`` (creating the parent dirs), then close it."""
    plt = _pyplot()
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=DPI, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def _sorted_steps(rows: Sequence[Mapping[str, Any]], what: str) -> list[Mapping[str, Any]]:
    """Validate ``steps.jsonl`` rows and return them ordered by step.

    Sorting makes the plots correct even when a resumed run appended rows out of order.
    """
    if len(rows) == 0:
        raise ValueError(f"{what}: no steps.jsonl rows to plot (empty input)")
    for i, row in enumerate(rows):
        if "step" not in row:
            raise ValueError(f"{what}: row {i} has no 'step' key: {dict(row)!r}")
    return sorted(rows, key=lambda r: int(r["step"]))


def _skill_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Skills in order of first appearance, so the order follows ``env.unwrapped.skills``."""
    names: dict[str, None] = {}
    for row in rows:
        for name in row.get("skills") or {}:
            names.setdefault(str(name), None)
    return list(names)


def _skill_value(row: Mapping[str, Any], skill: str) -> float:
    """Accuracy of ``skill`` in ``row``, NaN when the step did not report it (a gap, not 0)."""
    value = (row.get("skills") or {}).get(skill)
    return float("nan") if value is None else float(value)


def plot_learning_curve(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> None:
    """Plot overall and per-skill validation accuracy against step for one run.

    ``rows`` are the ``steps.jsonl`` rows of the run (``step`` 0 is the baseline after reset,
    then one row per step, with ``val_accuracy``, ``skills`` and ``examples_total``). Overall
    accuracy is drawn thick so it stands out from the thin per-skill lines; the legend sits
    outside the axes on the right so it never hides a curve. The y axis is fixed to [0, 1] so
    plots of different runs can be compared by eye.
    """
    ordered = _sorted_steps(rows, "plot_learning_curve")
    plt = _pyplot()
    steps = [int(r["step"]) for r in ordered]
    overall = [float(r["val_accuracy"]) for r in ordered]
    skills = _skill_names(ordered)

    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    for skill in skills:
        ax.plot(
            steps,
            [_skill_value(r, skill) for r in ordered],
            linewidth=1.0,
            alpha=0.8,
            marker="." if len(steps) <= 30 else None,
            label=skill,
        )
    ax.plot(steps, overall, color="black", linewidth=3.0, label="overall (val)", zorder=3)

    ax.set_ylim(0.0, 1.0)
    if len(steps) == 1:
        ax.set_xlim(steps[0] - 0.5, steps[0] + 0.5)
    ax.set_xlabel("step (0 = baseline after reset)")
    ax.set_ylabel("validation accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    last = ordered[-1]
    examples = last.get("examples_total")
    default_title = f"Learning curve: val accuracy {overall[-1]:.3f} after step {steps[-1]}"
    if examples is not None:
        default_title += f" ({int(examples)} examples)"
    ax.set_title(title if title is not None else default_title)
    ncol = 1 if len(skills) < 20 else 2
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", ncol=ncol)
    _save(fig, path)


def plot_skill_heatmap(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> None:
    """Plot a skills × steps heatmap of validation accuracy for one run.

    A heatmap shows at a glance which skills the teacher has worked on and when, which a
    line plot with many skills cannot. Colours are fixed to [0, 1] so heatmaps of different
    runs share a scale; a skill missing from a step is left blank rather than shown as 0.
    Cell edges lie halfway between recorded steps, so uneven step numbers still line up.
    """
    ordered = _sorted_steps(rows, "plot_skill_heatmap")
    skills = _skill_names(ordered)
    if not skills:
        raise ValueError("plot_skill_heatmap: the rows have no per-skill accuracies ('skills')")
    plt = _pyplot()
    import numpy as np

    steps = np.array([int(r["step"]) for r in ordered], dtype=float)
    grid = np.ma.masked_invalid(
        np.array([[_skill_value(r, s) for r in ordered] for s in skills], dtype=float)
    )
    if len(steps) == 1:
        x_edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
    else:
        mids = (steps[:-1] + steps[1:]) / 2.0
        x_edges = np.concatenate(
            [[steps[0] - (mids[0] - steps[0])], mids, [steps[-1] + (steps[-1] - mids[-1])]]
        )
    y_edges = np.arange(len(skills) + 1) - 0.5

    height = min(2.0 + 0.3 * len(skills), 30.0)
    fig, ax = plt.subplots(figsize=(9.0, height))
    mesh = ax.pcolormesh(x_edges, y_edges, grid, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_yticks(np.arange(len(skills)))
    ax.set_yticklabels(skills)
    ax.set_ylim(len(skills) - 0.5, -0.5)  # first skill at the top, as in the skill list
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step (0 = baseline after reset)")
    ax.set_ylabel("skill")
    ax.set_title(title if title is not None else "Per-skill validation accuracy")
    fig.colorbar(mesh, ax=ax, label="accuracy")
    _save(fig, path)


def plot_comparison(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> None:
    """Plot each teacher's mean validation-accuracy curve with a shaded 95% CI band.

    ``curves`` maps a teacher name to its per-seed curves (baseline first, then one value per
    step). Seeds of one teacher can end at different steps when the budget runs out
    differently; each teacher's curves are truncated to its shortest one so that every point
    of the mean averages the same seeds. The band is :func:`mean_ci95` per step; with a single
    seed there is no interval, so only the mean line is drawn.
    """
    if len(curves) == 0:
        raise ValueError("plot_comparison: no teachers to plot (empty input)")
    for teacher, seeds in curves.items():
        if len(seeds) == 0:
            raise ValueError(f"plot_comparison: teacher {teacher!r} has no curves")
        if any(len(c) == 0 for c in seeds):
            raise ValueError(f"plot_comparison: teacher {teacher!r} has an empty curve")
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    for teacher, seeds in curves.items():
        length = min(len(c) for c in seeds)
        stats = [mean_ci95([float(c[i]) for c in seeds]) for i in range(length)]
        x = list(range(length))
        means = [m for m, _ in stats]
        (line,) = ax.plot(x, means, linewidth=2.0, label=f"{teacher} (n={len(seeds)})")
        if len(seeds) >= 2 and not any(math.isnan(h) for _, h in stats):
            ax.fill_between(
                x,
                [max(0.0, m - h) for m, h in stats],
                [min(1.0, m + h) for m, h in stats],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0.0,
            )
    ax.set_ylim(0.0, 1.0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step (0 = baseline after reset)")
    ax.set_ylabel("validation accuracy (mean, 95% CI)")
    ax.set_title(title if title is not None else "Teacher comparison")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    _save(fig, path)
