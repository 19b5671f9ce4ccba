"""How fast does the code task judge HumanEval, against HumanEval's one-program harness?

Scoring a code split runs at every evaluation of the ``code`` task and bounds
how fast a teacher can be scored there. All 164 canonical solutions of
HumanEval are judged by each path, in the same sandbox pool of ``--workers``:

- judge: ``CodeTask.score_batch``, the task's judging: the completion in one
  sandbox, the tests in another, plain data between them (two sandboxed
  programs per problem);
- harness: HumanEval's own harness, one program per problem (prompt +
  completion + tests + a marker printed after ``check``,
  :func:`~teachgym.envs.tasks.code.build_program`), through the same pool and
  sandbox: what the judging costs by its design alone;
- before: that one-program harness on the sandbox as it was before the
  sandbox was bounded as a whole and judging moved out of the completion's
  interpreter (``teachgym/sandbox.py`` at commit ``c867d9c``, read from the
  checkout's git history; skipped where there is none). This is the scoring
  the code task shipped with, so ``judge / before`` is the price of
  unforgeable rewards.

The one-program harness is a baseline here and nothing else: the task never
scores that way. Every canonical solution must pass (164/164) on every path
and in every round, or the benchmark exits with status 1. Each path is warmed
up once, then timed in interleaved, rotating order for ``--repeats`` rounds
and the median is reported, so that noise from other processes on a shared
machine falls on all alike.

    python benchmarks/code_scoring.py [--data PATH] [--workers 2] [--repeats 3]
        [--timeout 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from teachgym.envs.tasks.code import CodeTask, build_program
from teachgym.runtime import cpu_name
from teachgym.sandbox import isolation_available

#: HumanEval in the shared data directory beside the checkout.
DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
)
#: The last commit whose sandbox and judging were those of before issue 15.
BEFORE_COMMIT = "c867d9c"


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


def sandbox_before() -> ModuleType | None:
    """``teachgym/sandbox.py`` as of :data:`BEFORE_COMMIT`, imported; None without git history."""
    repo = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(
            ["git", "-C", str(repo), "show", f"{BEFORE_COMMIT}:teachgym/sandbox.py"],
            capture_output=True, check=True, text=True, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(tempfile.mkdtemp()) / "sandbox_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sandbox_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HumanEval .jsonl(.gz)")
    parser.add_argument("--workers", type=int, default=2, help="problems at once in the pool")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per problem")
    args = parser.parse_args()
    if not args.data.exists():
        parser.error(f"no HumanEval file at {args.data} (give --data)")
    if not isolation_available():
        sys.exit("bubblewrap isolation is not available here; the benchmark times the sandbox")
    # 82 + 82: val and test together are the whole dataset (the train pool is empty)
    task = CodeTask(
        args.data, val_size=82, test_size=82, timeout_s=args.timeout, workers=args.workers
    )
    problems = task.problems("val") + task.problems("test")
    answers = [p.answer for p in problems]
    n = len(problems)
    marker = f"teachgym-passed-{secrets.token_hex(16)}"
    programs = [
        build_program(p.prompt, a, p.metadata["test"], p.metadata["entry_point"], marker=marker)
        for p, a in zip(problems, answers, strict=True)
    ]

    def marked(results: list) -> int:
        return sum(r.status == "ok" and r.stdout.splitlines()[-1:] == [marker] for r in results)

    paths: dict[str, Callable[[], int]] = {
        "judge": lambda: sum(task.score_batch(problems, answers)),
        "harness": lambda: marked(task.run_batch(programs)),
    }
    before = sandbox_before()
    if before is not None:
        pool = before.SandboxPool(args.workers, limits=before.Limits(memory_bytes=1 << 30))
        paths["before"] = lambda: marked(pool.map(programs, timeout_s=args.timeout))
    seconds, passes = time_rounds(paths, args.repeats)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"cpu: {cpu_name()}, {os.cpu_count()} logical CPUs, python {sys.version.split()[0]}")
    print(
        f"{n} HumanEval canonical solutions, pool of {args.workers}, timeout {args.timeout:g} s, "
        f"median of {args.repeats} rounds; sandbox bounds: {task.pool.sandbox.bounds}"
    )
    labels = {
        "judge": "judge (CodeTask.score_batch)",
        "harness": "one-program harness",
        "before": f"one-program, sandbox@{BEFORE_COMMIT}",
    }
    for name in paths:
        rounds = [round(s, 2) for s in seconds[name]]
        print(
            f"{labels[name]:<36} {median[name]:7.2f} s wall {rounds}, "
            f"{1000 * median[name] / n:6.1f} ms per problem, passed {passes[name]}/{n}"
        )
    for base in ("harness", "before"):
        if base in median:
            per_round = [
                round(j / b, 2) for j, b in zip(seconds["judge"], seconds[base], strict=True)
            ]
            print(
                f"code_scoring judge / {base}: {median['judge'] / median[base]:.2f}x  "
                f"per round {per_round}"
            )
    if before is None:
        print(f"(no git history with {BEFORE_COMMIT} here: the 'before' path was skipped)")
    if any(p != n for p in passes.values()):
        sys.exit(f"FAILED: canonical solutions must all pass ({passes})")
    empty = sum(task.score_batch(problems, ["    pass\n"] * n))
    print(f"empty bodies passed: {empty}/{n}")
    if empty:
        sys.exit("FAILED: an empty body must fail every problem")


if __name__ == "__main__":
    main()
