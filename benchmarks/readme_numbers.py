"""Every number the README reports, from one command anyone can rerun.

1. ``teachgym compare --teachers curriculum,learning_progress,uniform,random
   --seeds 5`` on the default config: AULC and final test accuracy per
   teacher (mean ± 95% CI over seeds) and the paired gains of the leader.
2. The default experiment (that comparison's episodes of the default config's
   teacher) per seed: final validation accuracy, the largest drop of the last
   step below the one before, AULC.
3. The wall time of ``teachgym run`` with the default config, median of
   ``--runs`` fresh processes (seed 0).

Everything is printed as Markdown with the CPU, torch version and thread count
it ran on: another CPU gives other floats. Finished episodes in ``--out`` are
reused (compare refuses ones run with another config), so an interrupted run
picks up where it stopped. Expect about half an hour on 2 cores.

    python benchmarks/readme_numbers.py [--out runs/readme] [--seeds 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from teachgym.config import load_config
from teachgym.experiments.compare import compare_teachers
from teachgym.experiments.runner import read_jsonl, resolve_config
from teachgym.experiments.stats import leaderboard, mean_ci95, paired_differences
from teachgym.runtime import cpu_name

TEACHERS = ["curriculum", "learning_progress", "uniform", "random"]


def pm(mean: float, ci: float | None) -> str:
    return f"{mean:.3f} ± {ci:.3f}" if ci is not None and ci == ci else f"{mean:.3f}"


def default_run_seconds(out: Path, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        run_dir = out / "timed" / f"run_{i}"
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "teachgym.experiments.cli", "run", "--out", str(run_dir)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/readme")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="timed default runs (0: skip)")
    args = parser.parse_args()
    out = Path(args.out)
    config = resolve_config(load_config())

    compare_teachers(config, TEACHERS, args.seeds, out / "compare")
    rows = json.loads((out / "compare" / "episodes.json").read_text())
    board = leaderboard(rows)
    leader = board[0]["teacher"]
    paired = paired_differences(rows, leader)

    print(f"CPU: {cpu_name()}; torch threads: {config.threads}; ", end="")
    import torch

    print(f"torch {torch.__version__}\n")
    print(f"## Default config, {args.seeds} seeds (teacher {config.teacher})\n")
    print("| seed | final val | largest last-step drop | AULC | final test |")
    print("|---|---|---|---|---|")
    finals, drops, aulcs = [], [], []
    dirs = {r["seed"]: r["run_dir"] for r in rows if r["teacher"] == config.teacher}
    for seed in range(args.seeds):
        run_dir = out / "compare" / dirs[seed]
        curve = [r["val_accuracy"] for r in read_jsonl(run_dir / "steps.jsonl")]
        summary = json.loads((run_dir / "summary.json").read_text())
        drop = max(0.0, curve[-2] - curve[-1])
        finals.append(curve[-1])
        drops.append(drop)
        aulcs.append(summary["aulc"])
        print(
            f"| {seed} | {curve[-1]:.3f} | {drop:.3f} | {summary['aulc']:.3f} | "
            f"{summary['final_test_accuracy']:.3f} |"
        )
    print(
        f"\nfinal val {pm(*mean_ci95(finals))} (min {min(finals):.3f}); largest last-step "
        f"drop {max(drops):.3f}; AULC {pm(*mean_ci95(aulcs))}\n"
    )
    print(f"## Teachers, {args.seeds} seeds (mean ± 95% CI)\n")
    print("| teacher | AULC | final test accuracy |")
    print("|---|---|---|")
    for r in board:
        print(
            f"| {r['teacher']} | {pm(r['aulc_mean'], r['aulc_ci95'])} | "
            f"{pm(r['final_test_mean'], r['final_test_ci95'])} |"
        )
    print(f"\n{leader} minus each teacher, paired by seed:\n")
    print("| vs | Δ AULC | Δ final test | seeds won |")
    print("|---|---|---|---|")
    for d in paired:
        print(
            f"| {d['teacher']} | {d['aulc_diff_mean']:+.3f} ± {d['aulc_diff_ci95']:.3f} | "
            f"{d['final_test_diff_mean']:+.3f} ± {d['final_test_diff_ci95']:.3f} | "
            f"{d['wins']}/{d['seeds']} |"
        )
    if args.runs:
        times = default_run_seconds(out, args.runs)
        print(
            f"\n## `teachgym run` wall time\n\nmedian {statistics.median(times):.1f} s over "
            f"{len(times)} runs ({', '.join(f'{t:.1f}' for t in times)})"
        )


if __name__ == "__main__":
    main()
