"""How does a trained PPO teacher do on the default experiment against the baselines?

Runs ``teachgym compare`` on the default config with the saved teacher and
curriculum, learning progress, uniform and random (``--seeds`` seeds each,
paired), then prints Markdown: the leaderboard (mean ± 95% CI over seeds),
the PPO teacher minus each baseline paired by seed, and what the teacher's
training cost (from its ``teacher.json``: episodes, PPO timesteps, wall time,
machine). Finished episodes in ``--out`` are read back, not rerun, so the
baselines of ``benchmarks/readme_numbers.py`` (same ``--out``) are shared.

    teachgym train-teacher ppo --out runs/ppo-teacher
    python benchmarks/ppo_teacher.py runs/ppo-teacher [--seeds 5] [--out runs/readme/compare]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from teachgym.config import load_config
from teachgym.experiments.compare import compare_teachers
from teachgym.experiments.runner import resolve_config
from teachgym.experiments.stats import leaderboard, paired_differences
from teachgym.runtime import cpu_name

BASELINES = ["curriculum", "learning_progress", "uniform", "random"]


def pm(mean: float, ci: float | None) -> str:
    return f"{mean:.3f} ± {ci:.3f}" if ci is not None and ci == ci else f"{mean:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", help="a directory written by `teachgym train-teacher`")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="runs/readme/compare")
    args = parser.parse_args()
    teacher = str(Path(args.teacher).resolve())
    meta = json.loads((Path(teacher) / "teacher.json").read_text())
    config = resolve_config(load_config())
    compare_teachers(config, [*BASELINES, teacher], args.seeds, Path(args.out))
    # Every episode in --out, this call's and earlier ones' (the baselines shared with
    # benchmarks/readme_numbers.py), as the leaderboard rows.
    rows = json.loads((Path(args.out) / "episodes.json").read_text())

    print(f"CPU: {cpu_name()}; torch {torch.__version__}; torch threads: {config.threads}\n")
    print(
        f"PPO teacher {args.teacher}: trained on {meta['episodes_done']} episodes "
        f"({meta['timesteps']} PPO timesteps, {meta['training']['num_envs']} at once) in "
        f"{meta['wall_s']:.0f} s on {meta['machine']}; complete: {meta['complete']}\n"
    )
    print(f"## Default config, {args.seeds} seeds (mean ± 95% CI)\n")
    print("| teacher | AULC | final test accuracy |")
    print("|---|---|---|")
    for r in leaderboard(rows):
        name = "ppo (trained)" if r["teacher"] == teacher else r["teacher"]
        print(
            f"| {name} | {pm(r['aulc_mean'], r['aulc_ci95'])} | "
            f"{pm(r['final_test_mean'], r['final_test_ci95'])} |"
        )
    print("\nPPO teacher minus each baseline, paired by seed:\n")
    print("| vs | Δ AULC | Δ final test | seeds won |")
    print("|---|---|---|---|")
    for d in paired_differences(rows, teacher):
        print(
            f"| {d['teacher']} | {d['aulc_diff_mean']:+.3f} ± {d['aulc_diff_ci95']:.3f} | "
            f"{d['final_test_diff_mean']:+.3f} ± {d['final_test_diff_ci95']:.3f} | "
            f"{d['wins']}/{d['seeds']} |"
        )


if __name__ == "__main__":
    main()
