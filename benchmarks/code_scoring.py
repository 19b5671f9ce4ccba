"""How fast does the code task score HumanEval, with the sandbox pool against one at a time?

Scoring a code split means running one sandboxed program per problem (a fresh
bubblewrap sandbox, ``python3 -I`` on prompt + completion + tests), so it runs
at every evaluation of the ``code`` task and bounds how fast a teacher can be
scored there. Both paths score the same work, all 164 canonical solutions of
HumanEval through ``CodeTask.score_batch``:

- pool: the task's :class:`~teachgym.sandbox.SandboxPool` with ``--workers``
  programs at once (default 2);
- serial: the same task code with ``workers=1``, one program after another.

Every canonical solution must pass (164/164), on both paths and in every
round, or the benchmark exits with status 1: a fast scorer that fails correct
code is worth nothing. Each path is warmed up once, then timed in
interleaved, rotating order for ``--repeats`` rounds and the median is
reported, so that noise from other processes on a shared machine falls on
both alike.

    python benchmarks/code_scoring.py [--data PATH] [--workers 2] [--repeats 3]
        [--timeout 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from teachgym.envs.tasks.code import CodeTask
from teachgym.runtime import cpu_name
from teachgym.sandbox import isolation_available

#: HumanEval in the shared data directory beside the checkout.
DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
)


def time_rounds(
    paths: dict[str, Callable[[], int]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Warm up every path once, then ``repeats`` rounds in rotating order.

    Returns each path's wall seconds per round and its lowest pass count
    over the warm-up and all rounds (a path returns how many passed).
    """
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    passes = {name: fn() for name, fn in paths.items()}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            passes[name] = min(passes[name], paths[name]())
            seconds[name].append(time.perf_counter() - start)
    return seconds, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HumanEval .jsonl(.gz)")
    parser.add_argument("--workers", type=int, default=2, help="programs at once in the pool")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    args = parser.parse_args()
    if not args.data.exists():
        parser.error(f"no HumanEval file at {args.data} (give --data)")
    if not isolation_available():
        sys.exit("bubblewrap isolation is not available here; the benchmark times the sandbox")
    # 82 + 82: val and test together are the whole dataset (the train pool is empty)
    kwargs = {"val_size": 82, "test_size": 82, "timeout_s": args.timeout}
    pooled = CodeTask(args.data, workers=args.workers, **kwargs)
    serial = CodeTask(args.data, workers=1, **kwargs)
    problems = pooled.problems("val") + pooled.problems("test")
    answers = [p.answer for p in problems]
    n = len(problems)
    seconds, passes = time_rounds(
        {
            "pool": lambda: sum(pooled.score_batch(problems, answers)),
            "serial": lambda: sum(serial.score_batch(problems, answers)),
        },
        args.repeats,
    )
    pool_s, serial_s = statistics.median(seconds["pool"]), statistics.median(seconds["serial"])
    print(f"cpu: {cpu_name()}, {os.cpu_count()} logical CPUs, python {sys.version.split()[0]}")
    print(
        f"{n} HumanEval canonical solutions through CodeTask.score_batch (bubblewrap sandbox, "
        f"timeout {args.timeout:g} s), median of {args.repeats} rounds"
    )
    for name, label, median in (
        ("pool", f"pool (workers={args.workers})", pool_s),
        ("serial", "serial (workers=1)", serial_s),
    ):
        rounds = [round(s, 2) for s in seconds[name]]
        print(
            f"{label:<22} {median:7.2f} s wall {rounds}, {1000 * median / n:6.1f} ms per program, "
            f"passed {passes[name]}/{n} (every round)"
        )
    per_round = [round(s / p, 2) for p, s in zip(seconds["pool"], seconds["serial"], strict=True)]
    print(
        f"code_scoring speedup (serial / pool, wall): {serial_s / pool_s:.2f}x  "
        f"per round {per_round}"
    )
    if passes["pool"] != n or passes["serial"] != n:
        sys.exit(
            f"FAILED: canonical solutions must all pass ({passes['pool']}, {passes['serial']})"
        )


if __name__ == "__main__":
    main()
