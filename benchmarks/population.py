"""How much faster are N episodes at once (one population) than N lone episodes in a row?

Runs the same N episodes two ways, with the same seeds and the same action
(even weights) every step: once through the vector env
(``gymnasium.make_vec("teachgym/SkillList-v0", num_envs=N)``, one population
trained and evaluated as a batch), once as N lone SkillList envs one after
another, env ``i`` with the tiny student of seed ``config.seed + i`` (what
member ``i`` is). Each way runs ``--repeats`` times, alternating, and the
median wall times give the ratio (episodes per second at once over one after
another). The issue's target is 3x for N=8 on 2 CPU cores.

The default config's sizes (student, task, step size, budget), all
``max_steps`` steps unless ``--steps`` cuts the episodes shorter; ``--small``
is a seconds-long smoke (the tests run it).

    python benchmarks/population.py [--n 8] [--steps S] [--repeats 3] [--small]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np

import teachgym  # noqa: F401 (registers the env ids)
from teachgym.assembly import build_task, make_env
from teachgym.config import ExperimentConfig, load_config
from teachgym.runtime import cpu_name, default_threads, set_torch_threads
from teachgym.students.tiny import tiny_student_for_task

SMALL: dict[str, Any] = {
    "task_kwargs": {"val_per_skill": 8, "test_per_skill": 8},
    "student_kwargs": {"hidden_size": 32, "layers": 1, "heads": 2, "batch_size": 16},
    "budget": 80,
    "examples_per_step": 40,
    "max_steps": 2,
}


def at_once(config: ExperimentConfig, n: int) -> tuple[float, list[float]]:
    """Seconds for n episodes through the vector env, and their test accuracies."""
    t0 = time.perf_counter()
    env = gym.make_vec(
        config.env, num_envs=n, vectorization_mode="vector_entry_point", config=config
    )
    env.reset(seed=config.seed)
    action = np.ones((n, len(env.skills)), dtype=np.float32)  # type: ignore[attr-defined]
    tests = [float("nan")] * n
    done = np.zeros(n, dtype=bool)
    while not done.all():
        _, _, terminated, truncated, info = env.step(action)
        for i in np.flatnonzero((terminated | truncated) & ~done):
            tests[i] = float(info["test_accuracy"][i])
        done |= terminated | truncated
    env.close()
    return time.perf_counter() - t0, tests


def one_after_another(config: ExperimentConfig, n: int) -> tuple[float, list[float]]:
    """Seconds for the same n episodes as lone envs in a row, and their test accuracies."""
    t0 = time.perf_counter()
    task = build_task(config)
    tests = []
    for i in range(n):
        student = tiny_student_for_task(task, seed=config.seed + i, **config.student_kwargs)
        env = make_env(config.env, config, task=task, student=student)
        env.reset(seed=config.seed + i)
        action = np.ones(len(env.skills), dtype=np.float32)
        while True:
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                tests.append(float(info["test_accuracy"]))
                break
        env.close()
    return time.perf_counter() - t0, tests


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="cut episodes to this many steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a seconds-long smoke")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = dict(SMALL) if args.small else {}
    if args.steps is not None:
        overrides["max_steps"] = args.steps
    overrides["threads"] = args.threads or default_threads()
    config = load_config(None, overrides)
    set_torch_threads(config.threads)
    batched, serial = [], []
    for _ in range(args.repeats):
        seconds, tests_batched = at_once(config, args.n)
        batched.append(seconds)
        seconds, tests_serial = one_after_another(config, args.n)
        serial.append(seconds)
    agree = np.mean(np.isclose(tests_batched, tests_serial, atol=2 / 896))
    ratio = statistics.median(serial) / statistics.median(batched)
    command = "python benchmarks/population.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {command.strip()}")
    print(
        f"{cpu_name()}, {config.threads} threads; N={args.n} episodes of {config.max_steps} "
        f"steps x {config.examples_per_step} examples; median of {args.repeats}"
    )
    print(f"at once (one population): {statistics.median(batched):.1f} s")
    print(f"one after another (lone students): {statistics.median(serial):.1f} s")
    print(
        f"test accuracies, at once vs lone: {tests_batched} vs {tests_serial} (agree {agree:.2f})"
    )
    print(f"ratio: {ratio:.2f}x (target >= 3x for N=8 on 2 CPU cores)")
    return ratio


if __name__ == "__main__":
    main()
