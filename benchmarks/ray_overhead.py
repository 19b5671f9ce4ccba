"""What does ``backend: ray`` cost next to ``backend: local`` on the same episode?

Runs the same episode twice on this machine, with the same seed and thread
count: once with the student and the generator in this process, once with
them in Ray actors (a local Ray instance, started before the clock starts:
a cluster is started once, not per episode). Prints both wall times, their
ratio (ray / local; the goal is at most 1.10) and whether the two
``steps.jsonl`` are byte-identical.

    python benchmarks/ray_overhead.py [--budget 60000] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from teachgym.config import load_config, parse_cli_overrides
from teachgym.distributed import connect
from teachgym.experiments.runner import EpisodeRunner, resolve_config
from teachgym.runtime import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=60_000)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    overrides = {"budget": args.budget, **parse_cli_overrides(args.overrides)}
    base = resolve_config(load_config(None, overrides))
    connect()
    times, outs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("local", "ray"):
            config = base.model_copy(update={"backend": backend})
            out = Path(tmp) / backend
            t0 = time.perf_counter()
            EpisodeRunner(config, out).run()
            times[backend] = time.perf_counter() - t0
            outs[backend] = (out / "steps.jsonl").read_bytes()
            print(f"{backend}: {times[backend]:.1f} s")
    print(f"cpu: {cpu_name()}, torch threads: {base.threads}, budget {base.budget}")
    print(f"steps.jsonl identical: {outs['local'] == outs['ray']}")
    print(f"ray_overhead ratio (ray / local): {times['ray'] / times['local']:.3f}")


if __name__ == "__main__":
    main()
