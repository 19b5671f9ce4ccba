"""How much faster is a sweep than running its episodes one after another?

Four episodes (two teachers x two seeds), every trial with the same
resources: one CPU and one torch thread. They run three ways on this machine:

1. as Ray Tune trials, two at a time (what ``teachgym sweep`` does on 2 cores);
2. as Ray Tune trials, one at a time (the same work, serialized);
3. ``teachgym compare``: one after another in one process, every core (the
   default thread count) to each episode, as the project did before sweeps.

Prints the wall times and two ratios: (2) / (1), the scaling from running
trials side by side (goal at least 1.7x on 2 cores; perfect is 2x), and
(3) / (1), the gain a user sees over a serial ``compare``.

    python benchmarks/sweep_scaling.py [--budget 60000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from teachgym.config import load_config
from teachgym.distributed import connect
from teachgym.experiments.sweep import SweepSpec, run_sweep
from teachgym.runtime import cpu_name, default_threads

TEACHERS = ["uniform", "learning_progress"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=60_000)
    args = parser.parse_args()
    config = load_config(None, {"budget": args.budget})
    one_thread = SweepSpec(config.model_copy(update={"threads": 1}), TEACHERS, 2, {})
    all_cores = SweepSpec(config.model_copy(update={"threads": default_threads()}), TEACHERS, 2, {})
    connect()
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec, executor, concurrent in (
            ("sweep, 2 at a time", one_thread, "tune", 2),
            ("sweep, 1 at a time", one_thread, "tune", 1),
            ("compare (serial, all cores)", all_cores, "serial", None),
        ):
            t0 = time.perf_counter()
            run_sweep(
                spec,
                Path(tmp) / name.split(",")[0] / str(concurrent),
                executor=executor,
                max_concurrent=concurrent,
            )
            times[name] = time.perf_counter() - t0
            print(f"{name}: {times[name]:.1f} s")
    parallel = times["sweep, 2 at a time"]
    print(f"cpu: {cpu_name()}, budget {args.budget}, 4 episodes")
    print(
        f"sweep_scaling ratio (1 at a time / 2 at a time): "
        f"{times['sweep, 1 at a time'] / parallel:.2f}x"
    )
    print(f"speed-up over serial compare: {times['compare (serial, all cores)'] / parallel:.2f}x")


if __name__ == "__main__":
    main()
