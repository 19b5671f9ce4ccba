"""How much does ``env.step`` add on top of the work it orchestrates?

Runs the default config's first steps twice, with the same seed and action:
once through ``env.step`` and once by calling the same generator, filter,
student and scorer directly (including the generation rounds that refill what
the filter drops). Both sides do identical work (same data, same weights), so
the ratio of wall times is the env's overhead. Prints the ratio; the goal is
at most 1.05.

    python benchmarks/step_overhead.py [--steps 6]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import gymnasium as gym
import numpy as np

import teachgym  # noqa: F401
from teachgym import registry
from teachgym.agents.generators.base import GenerationContext
from teachgym.config import load_config
from teachgym.envs.filtering import ExampleFilter
from teachgym.runtime import cpu_name, default_threads
from teachgym.types import Allocation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    config = load_config(None, {"threads": default_threads()})

    env = gym.make(config.env, config=config)
    core = env.unwrapped
    env.reset(seed=config.seed)
    skills = core.skills
    weights = np.ones(len(skills), dtype=np.float32)

    # The same components, built the same way, driven by hand.
    task = registry.build("task", config.task, **config.component_kwargs("task"))
    student = registry.build(
        "student", config.student, task=task, seed=config.seed, **config.student_kwargs
    )
    student.set_horizon(core.horizon)
    generator = registry.build(
        "generator",
        config.generator,
        task=task,
        seed=config.seed,
        **config.component_kwargs("generator"),
    )
    val, test = task.problems("val"), task.problems("test")
    filt = ExampleFilter(
        [p.prompt for p in val + test],
        task.alphabet,
        dedup=config.dedup,
        **config.decontamination.model_dump(),
    )
    episode_seed = core.state_dict()["episode_seed"]
    student.reset()

    env_times, direct_times = [], []
    for step in range(args.steps):
        t0 = time.perf_counter()
        _, _, _, _, info = env.step(weights)
        env_times.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        plan = Allocation.from_weights(skills, weights, config.examples_per_step)
        rng = np.random.default_rng([episode_seed, step])
        accepted: list = []
        taken: set[str] = set()
        for round_index in range(core.max_generation_rounds):
            got = Counter(e.skill for e in accepted)
            short = Allocation(counts={k: n - got[k] for k, n in plan.counts.items()})
            if short.total <= 0:
                break
            ctx = GenerationContext(
                step=step,
                rng=rng,
                max_examples=short.total,
                skills=skills,
                task=task,
                exclude=filt.excluded(taken),
                extra={"round": round_index},
            )
            examples, _ = generator.generate(short, ctx)
            new, _ = filt(examples, set(skills), short.total, taken)
            accepted += new
            if not new:
                break
        student.train(accepted)
        outputs = student.predict(val)
        accuracy = np.mean([task.score(p, o) for p, o in zip(val, outputs, strict=True)])
        direct_times.append(time.perf_counter() - t0)
        assert len(accepted) == info["examples_accepted"], "both sides must do the same work"
        print(
            f"step {step}: env.step {env_times[-1]:.3f} s, direct {direct_times[-1]:.3f} s "
            f"(val acc {info['accuracy']:.3f} vs {accuracy:.3f})"
        )

    ratio = sum(env_times) / sum(direct_times)
    print(f"cpu: {cpu_name()}, torch threads: {config.threads}")
    print(f"step_overhead ratio (env.step / direct calls) over {args.steps} steps: {ratio:.3f}")


if __name__ == "__main__":
    main()
