"""``teachgym compare``: every teacher on every seed, then a leaderboard.

Each episode is an ordinary run directory (``<out>/<teacher>/seed_<k>``), so
an interrupted comparison picks up where it stopped: finished episodes are
read back from their ``summary.json``, a half-done one is resumed, and one
whose recorded config differs from what is asked now is refused by name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from teachgym import registry
from teachgym.config import ExperimentConfig, build_config, config_diff, fingerprint
from teachgym.errors import RunError
from teachgym.experiments import plots
from teachgym.experiments.runner import EpisodeRunner, read_jsonl, resolve_config
from teachgym.experiments.stats import leaderboard, paired_differences


def compare_teachers(
    config: ExperimentConfig,
    teachers: list[str],
    seeds: int,
    out_dir: str | Path,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run ``teachers`` x ``range(seeds)``; write leaderboard.json, paired.json, comparison.png."""
    for name in teachers:
        registry.resolve("teacher", name)  # fail before hours of work, not after
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[list[float]]] = {t: [] for t in teachers}
    total = len(teachers) * seeds
    for i, teacher in enumerate(teachers):
        for seed in range(seeds):
            run_dir = out / teacher.replace(":", "_").replace("/", "_") / f"seed_{seed}"
            if console is not None:
                console.print(f"[{i * seeds + seed + 1}/{total}] teacher={teacher} seed={seed}")
            cfg = resolve_config(config.model_copy(update={"teacher": teacher, "seed": seed}))
            summary = _episode(cfg, run_dir)
            rows.append(
                {
                    "teacher": teacher,
                    "seed": seed,
                    "aulc": summary["aulc"],
                    "final_test_accuracy": summary["final_test_accuracy"],
                    "examples_used": summary["examples_used"],
                }
            )
            curves[teacher].append([r["val_accuracy"] for r in read_jsonl(run_dir / "steps.jsonl")])
            if console is not None:
                console.print(
                    f"    AULC {summary['aulc']:.3f}  test {summary['final_test_accuracy']:.3f}"
                )
    board = leaderboard(rows)
    # The leader against each other teacher, seed by seed (same seed = same initial student).
    paired = paired_differences(rows, board[0]["teacher"])
    (out / "leaderboard.json").write_text(json.dumps(_strict(board), indent=2))
    (out / "paired.json").write_text(json.dumps(_strict(paired), indent=2))
    (out / "episodes.json").write_text(json.dumps(rows, indent=2))
    plots.plot_comparison(curves, out / "comparison.png")
    if console is not None:
        console.print(leaderboard_table(board))
        if paired:
            console.print(paired_table(paired))
        console.print(f"leaderboard -> {out / 'leaderboard.json'}, paired -> {out / 'paired.json'}")
    return board


def _episode(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """The summary of ``config``'s episode in ``run_dir``: read back, resumed or run.

    A directory that holds an episode of another config is refused, naming the
    keys that differ: reusing it would put a different experiment in the
    leaderboard, and overwriting it would lose one.
    """
    saved_path = run_dir / "config.yaml"
    if saved_path.exists():
        saved = build_config(yaml.safe_load(saved_path.read_text()))
        if fingerprint(saved) != fingerprint(config):
            diff = "; ".join(config_diff(saved, config))
            raise RunError(
                f"{str(run_dir)!r} holds an episode of another config ({diff}); "
                f"choose another --out, or delete that directory to rerun it"
            )
        summary_path = run_dir / "summary.json"
        if summary_path.exists():
            return dict(json.loads(summary_path.read_text()))
        summary = EpisodeRunner(config, run_dir, resume=True, console=None).run()
    else:
        summary = EpisodeRunner(config, run_dir, console=None).run()
    assert summary is not None
    return summary


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
    """NaN (a one-seed CI) as null, so leaderboard.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
