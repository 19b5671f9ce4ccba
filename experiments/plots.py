"""PNG plots of a run (learning curve, per-skill heatmap) and of a teacher comparison.

Every function builds its figure with matplotlib's object API (``Figure``, never pyplot),
which renders PNG with Agg: plotting works on headless machines (clusters, CI, Ray workers)
without a display, changes no process-wide backend of the caller's, and leaves no figure
registered anywhere, so long sweeps do not accumulate open figures. Each function writes
exactly one file and creates its parent directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from teachgym.experiments.stats import mean_ci95

__all__ = ["plot_allocation", "plot_comparison", "plot_learning_curve", "plot_skill_heatmap"]

DPI = 120


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` as PNG to ``path`` (creating the parent dirs)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png", bbox_inches="tight")


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


def _skill_names(
    rows: Sequence[Mapping[str, Any]], skills: Sequence[str] | None = None
) -> list[str]:
    """``skills`` (the env's order) followed by any other skill the rows report, else the
    skills in order of first appearance (``steps.jsonl`` stores them sorted)."""
    names: dict[str, None] = dict.fromkeys(skills or ())
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
    skills: Sequence[str] | None = None,
) -> None:
    """Plot overall and per-skill validation accuracy against step and against examples.

    ``rows`` are the ``steps.jsonl`` rows of the run (``step`` 0 is the baseline after reset,
    then one row per step, with ``val_accuracy``, ``skills`` and ``examples_total``). The left
    panel's x axis is the step, the right one's the examples trained on so far (when the rows
    have ``examples_total``): steps of different sizes look alike against steps but not
    against data. Overall accuracy is drawn thick; the legend sits outside the axes on the
    right so it never hides a curve. The y axis is fixed to [0, 1] so plots of different
    runs can be compared by eye. ``skills`` orders the legend (the env's skill order).
    """
    ordered = _sorted_steps(rows, "plot_learning_curve")
    steps = [int(r["step"]) for r in ordered]
    overall = [float(r["val_accuracy"]) for r in ordered]
    names = _skill_names(ordered, skills)
    has_examples = all(r.get("examples_total") is not None for r in ordered)
    axes_x: list[tuple[list[float], str]] = [
        ([float(x) for x in steps], "step (0 = baseline after reset)")
    ]
    if has_examples:
        axes_x.append(([float(r["examples_total"]) for r in ordered], "examples trained on"))

    fig = Figure(figsize=(6.0 * len(axes_x) + 3.0, 5.0))
    axes = fig.subplots(1, len(axes_x), sharey=True, squeeze=False)
    for ax, (xs, label) in zip(axes[0], axes_x, strict=True):
        for skill in names:
            ax.plot(
                xs,
                [_skill_value(r, skill) for r in ordered],
                linewidth=1.0,
                alpha=0.8,
                marker="." if len(steps) <= 30 else None,
                label=skill,
            )
        ax.plot(xs, overall, color="black", linewidth=3.0, label="overall (val)", zorder=3)
        ax.set_ylim(0.0, 1.0)
        if len(steps) == 1:
            ax.set_xlim(xs[0] - 0.5, xs[0] + 0.5)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    ax = axes[0][0]
    ax.set_ylabel("validation accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    last = ordered[-1]
    examples = last.get("examples_total")
    default_title = f"Learning curve: val accuracy {overall[-1]:.3f} after step {steps[-1]}"
    if examples is not None:
        default_title += f" ({int(examples)} examples)"
    fig.suptitle(title if title is not None else default_title)
    ncol = 1 if len(names) < 20 else 2
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", ncol=ncol)
    _save(fig, path)


def plot_skill_heatmap(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    skills: Sequence[str] | None = None,
) -> None:
    """Plot a skills × steps heatmap of validation accuracy for one run.

    A heatmap shows at a glance which skills the teacher has worked on and when, which a
    line plot with many skills cannot. Colours are fixed to [0, 1] so heatmaps of different
    runs share a scale; a skill missing from a step is left blank rather than shown as 0.
    Cell edges lie halfway between recorded steps, so uneven step numbers still line up.
    """
    ordered = _sorted_steps(rows, "plot_skill_heatmap")
    names = _skill_names(ordered, skills)
    if not names:
        raise ValueError("plot_skill_heatmap: the rows have no per-skill accuracies ('skills')")
    values = [[_skill_value(r, s) for r in ordered] for s in names]
    _heatmap(
        ordered,
        names,
        values,
        path,
        title=title if title is not None else "Per-skill validation accuracy",
        label="accuracy",
        limits=(0.0, 1.0),
        cmap="viridis",
    )


def plot_allocation(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    skills: Sequence[str] | None = None,
) -> None:
    """Plot a skills × steps heatmap of the examples the teacher got per skill per step.

    What the teacher paid for (accepted examples, from ``examples_by_skill``),
    the companion of :func:`plot_skill_heatmap`: side by side they show where
    the data went and what it did. Step 0 (the baseline) has no data; a skill
    that got nothing in a step is 0.
    """
    ordered = [r for r in _sorted_steps(rows, "plot_allocation") if int(r["step"]) > 0]
    if not ordered:
        raise ValueError("plot_allocation: no step after the baseline to plot")
    names = _skill_names(ordered, skills)
    for row in ordered:
        for skill in row.get("examples_by_skill") or {}:
            if skill not in names:
                names.append(str(skill))
    if not names:
        raise ValueError("plot_allocation: the rows name no skills")
    values = [
        [
            float(((r.get("examples_by_skill") or {}).get(s) or {}).get("accepted", 0))
            for r in ordered
        ]
        for s in names
    ]
    top = max((v for row in values for v in row), default=0.0)
    _heatmap(
        ordered,
        names,
        values,
        path,
        title=title if title is not None else "Examples per skill per step (accepted)",
        label="examples",
        limits=(0.0, max(top, 1.0)),
        cmap="magma",
    )


def _heatmap(
    ordered: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    values: Sequence[Sequence[float]],
    path: str | os.PathLike[str],
    *,
    title: str,
    label: str,
    limits: tuple[float, float],
    cmap: str,
) -> None:
    """A skills × steps heatmap; cells span halfway to the neighbouring steps, so uneven
    step numbers still line up, and a NaN cell is left blank rather than shown as 0."""
    steps = np.array([int(r["step"]) for r in ordered], dtype=float)
    grid = np.ma.masked_invalid(np.array(values, dtype=float))
    if len(steps) == 1:
        x_edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
    else:
        mids = (steps[:-1] + steps[1:]) / 2.0
        x_edges = np.concatenate(
            [[steps[0] - (mids[0] - steps[0])], mids, [steps[-1] + (steps[-1] - mids[-1])]]
        )
    y_edges = np.arange(len(names) + 1) - 0.5

    height = min(2.0 + 0.3 * len(names), 30.0)
    fig = Figure(figsize=(9.0, height))
    ax = fig.subplots()
    mesh = ax.pcolormesh(x_edges, y_edges, grid, vmin=limits[0], vmax=limits[1], cmap=cmap)
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels(names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first skill at the top, as in the skill list
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step (0 = baseline after reset)")
    ax.set_ylabel("skill")
    ax.set_title(title)
    fig.colorbar(mesh, ax=ax, label=label)
    _save(fig, path)


def plot_comparison(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    examples: Mapping[str, Sequence[Sequence[float]]] | None = None,
) -> None:
    """Plot each teacher's mean validation-accuracy curve with a shaded 95% CI band.

    ``curves`` maps a teacher name to its per-seed curves (baseline first, then one value per
    step). Seeds of one teacher can end at different steps when the budget runs out
    differently; each teacher's curves are truncated to its shortest one so that every point
    of the mean averages the same seeds. The band is :func:`mean_ci95` per step; with a single
    seed there is no interval, so only the mean line is drawn. With ``examples`` (the same
    shape: examples trained on so far at each point) a second panel plots the same means
    against the mean examples used, since teachers' steps can differ in size.
    """
    if len(curves) == 0:
        raise ValueError("plot_comparison: no teachers to plot (empty input)")
    for teacher, seeds in curves.items():
        if len(seeds) == 0:
            raise ValueError(f"plot_comparison: teacher {teacher!r} has no curves")
        if any(len(c) == 0 for c in seeds):
            raise ValueError(f"plot_comparison: teacher {teacher!r} has an empty curve")
    panels = 2 if examples else 1
    fig = Figure(figsize=(6.0 * panels + 3.0, 5.0))
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)
    for teacher, seeds in curves.items():
        length = min(len(c) for c in seeds)
        stats = [mean_ci95([float(c[i]) for c in seeds]) for i in range(length)]
        xs: list[list[float]] = [[float(i) for i in range(length)]]
        if examples:
            spent = examples[teacher]
            xs.append([sum(float(c[i]) for c in spent) / len(spent) for i in range(length)])
        means = [m for m, _ in stats]
        color = None
        for ax, x in zip(axes[0], xs, strict=True):
            (line,) = ax.plot(
                x, means, linewidth=2.0, label=f"{teacher} (n={len(seeds)})", color=color
            )
            color = line.get_color()
            if len(seeds) >= 2 and not any(math.isnan(h) for _, h in stats):
                ax.fill_between(
                    x,
                    [max(0.0, m - h) for m, h in stats],
                    [min(1.0, m + h) for m, h in stats],
                    color=color,
                    alpha=0.2,
                    linewidth=0.0,
                )
    labels = ["step (0 = baseline after reset)", "examples trained on (mean over seeds)"]
    for ax, label in zip(axes[0], labels, strict=False):
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0][0].xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel("validation accuracy (mean, 95% CI)")
    fig.suptitle(title if title is not None else "Teacher comparison")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    _save(fig, path)
