"""Shared fixtures: a config small enough that an env step takes milliseconds."""

from __future__ import annotations

from typing import Any

import pytest

#: A tiny student and a tiny task: every env step trains on a handful of
#: examples, so check_env's dozen resets and steps run in well under a second.
FAST: dict[str, Any] = {
    "task_kwargs": {"val_per_skill": 4, "test_per_skill": 4},
    "student_kwargs": {"hidden_size": 32, "layers": 1, "heads": 2, "batch_size": 16},
    "budget": 60,
    "examples_per_step": 20,
    "max_steps": 10,
}


@pytest.fixture
def fast() -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in FAST.items()}
