"""How close does the student's training come to this CPU's peak, and what does that
leave for a population to win?

The population benchmark (``benchmarks/population.py``) measures how much
faster N episodes run at once than in a row. This one measures the ceiling
that ratio lives under on the machine it runs on. Batching N students does not
reduce the arithmetic each one needs; it can only make that arithmetic run
closer to the machine's peak and remove per-call overhead. So N episodes at
once take at least N times one episode's training FLOPs at peak, and the
ratio over N lone episodes in a row is at most

    bound = lone episode seconds / (its training FLOPs / peak FLOP/s)

even if generation, evaluation and every other cost vanished. Measured, in one
run and with the same threads:

- peak: the best of ``--repeats`` float32 matrix products of 2048 x 2048
  (``torch.mm``), what this CPU's BLAS reaches on a large shape;
- lone: one ``train`` call of the config's tiny student on ``--examples``
  examples (an env step's worth): its floating-point operations counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on one student, its time on a
  twin (same seed, same data) without the counter;
- population: the same for N members (seeds ``seed .. seed+N-1``), each on
  the same examples, in one call;
- episode: one lone episode of the config (even weights on every skill), its
  wall time and the examples it trained on; its training FLOPs are those
  examples times the lone call's FLOPs per example.

FLOPs are what ``FlopCounterMode`` counts: matrix products. Element-wise work
is left out, and so is the lone student's attention (CPU's fused
``scaled_dot_product_attention`` has no FLOP formula), while the population's
eager attention is counted as matrix products: its FLOPs are a few percent over
N lone calls'. Leaving work out only raises the bound, so it stays an upper bound.

    python benchmarks/cpu_roofline.py [--n 8] [--examples 6000] [--steps S] [--small]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from teachgym.assembly import build_task, make_env
from teachgym.config import ExperimentConfig, load_config
from teachgym.runtime import cpu_name, default_threads, set_torch_threads
from teachgym.students.population import tiny_population_for_task
from teachgym.students.tiny import tiny_student_for_task
from teachgym.types import Example, Provenance

#: A seconds-long smoke (the tests run it): a narrow student and a short episode.
SMALL: dict[str, Any] = {
    "task_kwargs": {"val_per_skill": 8, "test_per_skill": 8},
    "student_kwargs": {"hidden_size": 32, "layers": 1, "heads": 2, "batch_size": 16},
    "budget": 80,
    "examples_per_step": 40,
    "max_steps": 2,
}


def peak_flops(size: int, repeats: int) -> float:
    """FLOP/s of the best of ``repeats`` float32 ``size x size`` matrix products."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm-up: BLAS threads, allocations
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def make_examples(task: Any, n: int, seed: int) -> list[Example]:
    """``n`` examples spread evenly over the task's skills (the task's own problems)."""
    rng = np.random.default_rng(seed)
    src = Provenance(generator="benchmark")
    per = max(1, n // len(task.leaf_skills))
    return [
        Example(prompt=p.prompt, completion=p.answer, skill=p.skill, source=src)
        for skill in task.leaf_skills
        for p in task.sample(skill, per, rng)
    ]


def counted_and_timed(build: Callable[[], Any], train: Callable[[Any], Any]) -> tuple[float, float]:
    """(FLOPs, seconds) of ``train`` on a fresh ``build()``: counted on one, timed on a twin.

    Counting runs every operation through a dispatch mode, which is slow, so the
    time comes from a second, identical object trained without it.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        train(build())
    twin = build()
    t0 = time.perf_counter()
    train(twin)
    return float(counter.get_total_flops()), time.perf_counter() - t0


def lone_episode(
    config: ExperimentConfig, task: Any, student_kwargs: dict[str, Any]
) -> tuple[float, int]:
    """Seconds of one lone episode with even weights, and the examples it trained on."""
    t0 = time.perf_counter()
    student = tiny_student_for_task(task, seed=config.seed, **student_kwargs)
    env = make_env(config.env, config, task=task, student=student)
    env.reset(seed=config.seed)
    action = np.ones(len(env.skills), dtype=np.float32)  # type: ignore[attr-defined]
    while True:
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    env.close()
    return time.perf_counter() - t0, int(sum(info["examples_used"].values()))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="population members")
    parser.add_argument("--examples", type=int, default=None, help="examples per train call")
    parser.add_argument("--steps", type=int, default=None, help="cut the episode to S steps")
    parser.add_argument("--repeats", type=int, default=5, help="matrix products for the peak")
    parser.add_argument("--small", action="store_true", help="a seconds-long smoke")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = dict(SMALL) if args.small else {}
    if args.steps is not None:
        overrides["max_steps"] = args.steps
    overrides["threads"] = args.threads or default_threads()
    config = load_config(None, overrides)
    set_torch_threads(config.threads)
    task = build_task(config)
    # A CPU roofline: the students stay on the CPU even where a GPU is present.
    student_kwargs = {**config.student_kwargs, "device": "cpu"}
    examples = make_examples(task, args.examples or config.examples_per_step, config.seed)
    seeds = [config.seed + i for i in range(args.n)]

    peak = peak_flops(256 if args.small else 2048, args.repeats)
    lone_flops, lone_s = counted_and_timed(
        lambda: tiny_student_for_task(task, seed=config.seed, **student_kwargs),
        lambda student: student.train(examples),
    )
    pop_flops, pop_s = counted_and_timed(
        lambda: tiny_population_for_task(task, seeds, **student_kwargs),
        lambda population: population.train({i: examples for i in range(args.n)}),
    )
    episode_s, episode_examples = lone_episode(config, task, student_kwargs)
    episode_flops = lone_flops / len(examples) * episode_examples
    bound = episode_s / (episode_flops / peak)

    command = "python benchmarks/cpu_roofline.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print(f"$ {command.strip()}")
    print(f"{cpu_name()}, {config.threads} threads, torch {torch.__version__}")
    print(f"peak (float32 mm): {peak / 1e9:.1f} GFLOP/s")
    print(
        f"lone train call ({len(examples)} examples): {lone_flops / 1e9:.1f} GFLOP in "
        f"{lone_s:.2f} s = {lone_flops / lone_s / 1e9:.1f} GFLOP/s, "
        f"{lone_flops / lone_s / peak:.0%} of peak"
    )
    print(
        f"population of {args.n} (same examples each): {pop_flops / 1e9:.1f} GFLOP in "
        f"{pop_s:.2f} s = {pop_flops / pop_s / 1e9:.1f} GFLOP/s, "
        f"{pop_flops / pop_s / peak:.0%} of peak; {args.n * lone_s / pop_s:.2f}x "
        f"{args.n} lone calls"
    )
    print(
        f"lone episode: {episode_s:.1f} s, {episode_examples} examples trained, "
        f"{episode_flops / 1e9:.0f} GFLOP of training = {episode_flops / peak:.1f} s at peak "
        f"({episode_flops / peak / episode_s:.0%} of the episode)"
    )
    print(
        f"bound on N episodes at once over N in a row: {bound:.2f}x "
        "(every cost but training gone, training at peak)"
    )
    return {
        "peak": peak,
        "lone_flops": lone_flops,
        "lone_s": lone_s,
        "pop_flops": pop_flops,
        "pop_s": pop_s,
        "episode_s": episode_s,
        "bound": bound,
    }


if __name__ == "__main__":
    main()
