"""Tests for experiments.stats (AULC, CIs, leaderboard) and experiments.plots (PNG output)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from teachgym.experiments.plots import plot_comparison, plot_learning_curve, plot_skill_heatmap
from teachgym.experiments.stats import (
    LEADERBOARD_KEYS,
    aulc,
    format_leaderboard,
    leaderboard,
    mean_ci95,
    paired_differences,
    t_quantile_975,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000  # a real image, not just a header


def _steps_rows(n_steps: int = 5) -> list[dict[str, Any]]:
    rows = []
    for step in range(n_steps + 1):
        skills = {"add": min(1.0, 0.1 + 0.2 * step), "mul": 0.05 * step}
        if step >= 2:
            skills["div"] = 0.1 * step  # a skill that appears later
        rows.append(
            {
                "step": step,
                "val_accuracy": sum(skills.values()) / len(skills),
                "skills": skills,
                "examples_total": 64 * step,
            }
        )
    return rows


# --- aulc -------------------------------------------------------------------------------------


def test_aulc_known_curves() -> None:
    assert aulc([0.0, 1.0]) == pytest.approx(0.5)
    assert aulc([0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.3)
    # trapezoids: (0+0.5)/2=0.25, (0.5+0.5)/2=0.5, (0.5+1)/2=0.75 -> mean 0.5
    assert aulc([0.0, 0.5, 0.5, 1.0]) == pytest.approx(0.5)
    assert aulc([0.42]) == pytest.approx(0.42)


def test_aulc_is_length_normalised() -> None:
    # the same linear ramp sampled at 2 or 11 points has the same normalised area
    fine = [i / 10 for i in range(11)]
    assert aulc(fine) == pytest.approx(aulc([0.0, 1.0]))


def test_aulc_rewards_learning_early() -> None:
    early = [0.0, 0.8, 0.9, 0.9]
    late = [0.0, 0.1, 0.2, 0.9]
    assert aulc(early) > aulc(late)


def test_aulc_empty_raises() -> None:
    with pytest.raises(ValueError, match="at least one"):
        aulc([])


# --- mean_ci95 --------------------------------------------------------------------------------


def test_mean_ci95_three_values() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    # sample sd = 1, n = 3, df = 2 -> t = 4.3027
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.3027 / math.sqrt(3))
    assert half == pytest.approx(2.48417, abs=1e-4)


def test_mean_ci95_two_values() -> None:
    mean, half = mean_ci95([0.4, 0.6])
    # sd = sqrt(0.02) ~ 0.141421, df = 1 -> t = 12.7062; half = 12.7062 * 0.141421 / sqrt(2)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(12.7062 * 0.1, rel=1e-9)


def test_mean_ci95_large_sample_uses_normal() -> None:
    values = [0.0, 1.0] * 20  # n = 40, df = 39 > 30 -> 1.96
    mean, half = mean_ci95(values)
    sd = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 39)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(1.96 * sd / math.sqrt(40))


def test_mean_ci95_single_and_empty() -> None:
    mean, half = mean_ci95([0.7])
    assert mean == pytest.approx(0.7)
    assert math.isnan(half)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_t_table() -> None:
    assert t_quantile_975(1) == pytest.approx(12.7062)
    assert t_quantile_975(30) == pytest.approx(2.0423)
    assert t_quantile_975(31) == 1.96
    # the table is monotonically decreasing towards the normal value
    values = [t_quantile_975(df) for df in range(1, 32)]
    assert all(a > b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError):
        t_quantile_975(0)


# --- leaderboard ------------------------------------------------------------------------------


def _episode(teacher: str, seed: int, a: float, test: float, ex: int) -> dict[str, Any]:
    return {
        "teacher": teacher,
        "seed": seed,
        "aulc": a,
        "final_test_accuracy": test,
        "examples_used": ex,
        "wall_seconds": 1.0,  # extra keys are ignored
    }


def test_leaderboard_order_keys_and_values() -> None:
    rows = [
        _episode("random", 0, 0.30, 0.40, 100),
        _episode("greedy", 0, 0.70, 0.80, 300),
        _episode("random", 1, 0.50, 0.60, 200),
        _episode("greedy", 1, 0.60, 0.70, 100),
        _episode("greedy", 2, 0.80, 0.90, 200),
        _episode("single", 0, 0.55, 0.65, 50),
    ]
    board = leaderboard(rows)
    assert [r["teacher"] for r in board] == ["greedy", "single", "random"]
    for row in board:
        assert tuple(row) == LEADERBOARD_KEYS
        assert set(row) == {
            "teacher",
            "aulc_mean",
            "aulc_ci95",
            "final_test_mean",
            "final_test_ci95",
            "examples_mean",
            "seeds",
        }
    greedy, single, random = board
    assert greedy["seeds"] == 3
    assert greedy["aulc_mean"] == pytest.approx(0.7)
    # aulc values 0.7, 0.6, 0.8: sd = 0.1, df = 2
    assert greedy["aulc_ci95"] == pytest.approx(4.3027 * 0.1 / math.sqrt(3))
    assert greedy["final_test_mean"] == pytest.approx(0.8)
    assert greedy["examples_mean"] == pytest.approx(200.0)
    assert random["seeds"] == 2
    assert random["aulc_mean"] == pytest.approx(0.4)
    assert single["seeds"] == 1
    assert math.isnan(single["aulc_ci95"])


def test_leaderboard_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        leaderboard([])
    with pytest.raises(ValueError, match="duplicate"):
        leaderboard([_episode("a", 0, 0.1, 0.1, 1), _episode("a", 0, 0.2, 0.2, 1)])
    with pytest.raises(ValueError, match="lacks keys"):
        leaderboard([{"teacher": "a", "seed": 0, "aulc": 0.1}])


def test_paired_differences_remove_the_shared_seed_effect() -> None:
    # Seed difficulty swings both teachers by 0.3, the gap is a steady 0.04: the per-teacher
    # intervals overlap, the paired one is tight and clear of zero.
    rows = [_episode("lp", s, 0.3 + 0.1 * s + 0.04, 0.9, 1) for s in range(4)]
    rows += [
        _episode("uniform", s, 0.3 + 0.1 * s + (0.01 if s % 2 else 0.0), 0.8, 1) for s in range(4)
    ]
    rows += [_episode("random", s, 0.2, 0.5, 1) for s in (0, 1, 9)]  # seed 9: lp never ran it
    board = leaderboard(rows)
    lp, uni = (next(r for r in board if r["teacher"] == t) for t in ("lp", "uniform"))
    assert lp["aulc_mean"] - lp["aulc_ci95"] < uni["aulc_mean"] + uni["aulc_ci95"]
    diffs = {d["teacher"]: d for d in paired_differences(rows, "lp")}
    assert set(diffs) == {"uniform", "random"}
    d = diffs["uniform"]
    assert d["aulc_diff_mean"] == pytest.approx(0.035)
    assert 0 < d["aulc_diff_ci95"] < d["aulc_diff_mean"]
    assert d["final_test_diff_mean"] == pytest.approx(0.1) and d["wins"] == 4 == d["seeds"]
    assert diffs["random"]["seeds"] == 2  # only the seeds both ran
    assert math.isnan(paired_differences(rows[:1] + rows[4:5], "lp")[0]["aulc_diff_ci95"])
    with pytest.raises(ValueError, match="reference teacher 'greedy'"):
        paired_differences(rows, "greedy")


def test_format_leaderboard_aligned() -> None:
    board = leaderboard(
        [
            _episode("learning_progress", 0, 0.6, 0.7, 1000),
            _episode("learning_progress", 1, 0.8, 0.9, 1200),
            _episode("random", 0, 0.3, 0.4, 900),
        ]
    )
    text = format_leaderboard(board)
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:2] == ["rank", "teacher"]
    assert "learning_progress" in lines[1] and "0.700 ± " in lines[1]
    assert "n/a" in lines[2]  # single seed: no interval
    # columns aligned: every line places the 'seeds' column at the same right edge
    assert len({len(line) for line in lines}) == 1


# --- plots ------------------------------------------------------------------------------------


def test_plot_learning_curve_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "run" / "nested" / "learning_curve.png"
    plot_learning_curve(_steps_rows(), out)
    _assert_png(out)


def test_plot_learning_curve_single_row_and_unsorted(tmp_path: Path) -> None:
    rows = _steps_rows(3)
    plot_learning_curve(list(reversed(rows)), tmp_path / "rev.png", title="custom")
    _assert_png(tmp_path / "rev.png")
    plot_learning_curve(rows[:1], tmp_path / "one.png")
    _assert_png(tmp_path / "one.png")


def test_plot_skill_heatmap_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "skills_heatmap.png"
    plot_skill_heatmap(_steps_rows(), str(out))
    _assert_png(out)
    plot_skill_heatmap(_steps_rows()[:1], tmp_path / "one.png")
    _assert_png(tmp_path / "one.png")


def test_plot_comparison_writes_png(tmp_path: Path) -> None:
    curves = {
        "learning_progress": [[0.1, 0.4, 0.6, 0.7], [0.1, 0.5, 0.6], [0.2, 0.4, 0.7, 0.8, 0.8]],
        "random": [[0.1, 0.2, 0.3], [0.1, 0.3, 0.3]],
        "single_seed": [[0.1, 0.15, 0.2]],
    }
    out = tmp_path / "cmp" / "comparison.png"
    plot_comparison(curves, out)
    _assert_png(out)


def test_plots_close_their_figures(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plot_learning_curve(_steps_rows(), tmp_path / "a.png")
    plot_skill_heatmap(_steps_rows(), tmp_path / "b.png")
    plot_comparison({"t": [[0.1, 0.2], [0.2, 0.3]]}, tmp_path / "c.png")
    assert len(plt.get_fignums()) == before


def test_plots_empty_input_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        plot_learning_curve([], tmp_path / "a.png")
    with pytest.raises(ValueError, match="empty"):
        plot_skill_heatmap([], tmp_path / "b.png")
    with pytest.raises(ValueError, match="empty"):
        plot_comparison({}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="no curves"):
        plot_comparison({"t": []}, tmp_path / "d.png")
    with pytest.raises(ValueError, match="empty curve"):
        plot_comparison({"t": [[0.1], []]}, tmp_path / "e.png")
    with pytest.raises(ValueError, match="no per-skill"):
        plot_skill_heatmap([{"step": 0, "val_accuracy": 0.1, "skills": {}}], tmp_path / "f.png")
    assert not list(tmp_path.iterdir())  # nothing written on failure
