"""The ``llm`` generator, the arithmetic checker, LLM-tolerant plan parsing, stats in ``info``.

The generator runs against the real :class:`LLMClient` with a scripted backend
(defined here: it answers from a function of the request and records every
call), and once end to end on ``teachgym/SkillList-v0`` over real HTTP against
the stand-in server of ``tests/llm_standin.py``.
"""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from llm_standin import StandIn, json_reply

import teachgym.experiments
from teachgym import registry
from teachgym.agents.generators.base import GenerationContext
from teachgym.agents.generators.llm import LLMGenerator, load_prompts
from teachgym.agents.generators.procedural import parse_text_plan
from teachgym.agents.llm import LLMCallError, LLMClient, RawReply, Sampling
from teachgym.config import load_config
from teachgym.envs.tasks.arithmetic import FAMILIES, ArithmeticTask
from teachgym.errors import ConfigError
from teachgym.types import Allocation, ErrorCase, EvalReport, SkillStats, TextPlan, TreeAction

SMOKE = Path(teachgym.experiments.__file__).parent / "configs" / "smoke.yaml"

_SKILL_REQUEST = re.compile(r'Write (\d+) new, varied problems of the skill "([^"]+)"')
_TEXT_REQUEST = re.compile(r"write (\d+) new, varied problems")

Respond = Callable[[list[dict[str, str]], Sampling], "RawReply | Exception"]


class ScriptedBackend:
    """A scripted backend: ``respond(messages, sampling)`` makes each reply (or the
    ``LLMCallError`` to raise); every call's messages, sampling and schema are recorded."""

    model = "scripted-model"

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.calls: list[tuple[list[dict[str, str]], Sampling, dict[str, Any] | None]] = []

    async def send(
        self, messages: Sequence[dict[str, str]], sampling: Sampling, schema: dict[str, Any] | None
    ) -> RawReply:
        self.calls.append((list(messages), sampling, schema))
        out = self.respond(list(messages), sampling)
        if isinstance(out, Exception):
            raise out
        return out

    @property
    def users(self) -> list[str]:
        return [messages[-1]["content"] for messages, _, _ in self.calls]


def _reply(items: list[dict[str, str]]) -> RawReply:
    return RawReply(json.dumps({"examples": items}), "stop", prompt_tokens=11, completion_tokens=7)


def oracle(
    task: ArithmeticTask, edit: Callable[[int, dict[str, str]], dict[str, str] | None] | None = None
) -> Respond:
    """Answers every skill request with fresh correct problems of the skill it names
    (drawn with the request's seed), after ``edit(i, item)`` (None drops an item)."""

    def respond(messages: list[dict[str, str]], sampling: Sampling) -> RawReply:
        m = _SKILL_REQUEST.search(messages[-1]["content"])
        assert m is not None, messages[-1]["content"]
        n, skill = int(m.group(1)), m.group(2)
        held_out = {p.prompt for p in task.problems("val") + task.problems("test")}
        drawn = task.sample(skill, 4 * n + 8, np.random.default_rng(sampling.seed))
        problems = [p for p in drawn if p.prompt not in held_out][:n]
        items = [{"prompt": p.prompt, "answer": p.answer} for p in problems]
        if edit is not None:
            items = [e for i, item in enumerate(items) if (e := edit(i, item)) is not None]
        return _reply(items)

    return respond


@pytest.fixture
def task() -> ArithmeticTask:
    return ArithmeticTask(skills=["add/carry", "sub/borrow", "cmp/3d"], val_per_skill=8)


def _context(
    task: ArithmeticTask,
    max_examples: int = 100,
    step: int = 0,
    round_index: int = 0,
    report: EvalReport | None = None,
    seed: int = 0,
) -> GenerationContext:
    val = task.problems("val") + task.problems("test")
    return GenerationContext(
        step=step,
        rng=np.random.default_rng([seed, step]),
        max_examples=max_examples,
        skills=task.leaf_skills,
        task=task,
        report=report,
        exclude=frozenset(p.prompt for p in val),
        extra={"round": round_index},
    )


def _generator(task: ArithmeticTask, backend: ScriptedBackend, **kwargs: Any) -> LLMGenerator:
    client = LLMClient(
        backend,
        backoff_s=0.0,
        max_attempts=kwargs.pop("max_attempts", 2),
        cache_dir=kwargs.pop("cache_dir", None),
    )
    return LLMGenerator(task=task, seed=kwargs.pop("seed", 0), llm=client, **kwargs)


def _max_items(backend: ScriptedBackend) -> list[int]:
    return [schema["properties"]["examples"]["maxItems"] for _, _, schema in backend.calls]


# -- the arithmetic checker ---------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("answer_order", ["lsd_first", "msd_first"])
@pytest.mark.parametrize("pad", [False, True])
def test_arithmetic_check_every_family_both_orders_padded(family, answer_order, pad):
    task = ArithmeticTask(
        skills=[family, "add/carry_4d"] if family != "add/carry_4d" else [family],
        val_per_skill=1,
        test_per_skill=1,
        answer_order=answer_order,
        pad_operands=pad,
    )
    problems = task.sample(family, 200, np.random.default_rng(7))
    for p in problems:
        assert task.check(p.prompt, p.answer) is True, p
        assert task.check(p.prompt, f" {p.answer}\n") is True  # whitespace around is not format
        assert task.skill_of(p.prompt) == family, p
        if FAMILIES[family][0] != "?":
            other = p.answer[::-1]  # the other digit order
            assert task.check(p.prompt, other) is (other == p.answer)
            assert task.check(p.prompt, str(int(p.answer[::-1]) + 1)[::-1]) is False
        else:
            assert task.check(p.prompt, {"<": ">", ">": "=", "=": "<"}[p.answer]) is False
    if pad:  # every operand padded to the longest operand of the chosen skills
        assert all(len(re.split(r"[-+*?=]", p.prompt)[0]) == 4 for p in problems)


def test_arithmetic_check_refuses_what_the_task_does_not_write():
    task = ArithmeticTask(skills=["add/carry", "sub/borrow"], val_per_skill=1, test_per_skill=1)
    assert task.check("47+85=", "231") is True and task.check("47+85=", "132") is False
    for prompt in ["47 + 85 =", "47+85", "47×85=", "047+85=", "3-5=", "", "x+1=", "47+85=1"]:
        assert task.check(prompt, "0") is None, prompt
    msd = ArithmeticTask(skills=["add/carry"], val_per_skill=1, answer_order="msd_first")
    assert msd.check("47+85=", "132") is True and msd.check("47+85=", "231") is False
    padded = ArithmeticTask(
        skills=["add/carry", "add/carry_3d"], val_per_skill=1, pad_operands=True
    )
    assert padded.check("047+085=", "231") is True
    assert padded.check("47+85=", "231") is None  # unpadded in a padded task: not its format
    assert task.skill_of("4+5=") is None and task.skill_of("47+5=") is None


# -- generating from count plans ----------------------------------------------------------


def test_correct_examples_accepted_wrong_ones_rejected_with_reasons(task):
    excluded = task.problems("val")[0]

    def edit(i: int, item: dict[str, str]) -> dict[str, str] | None:
        if i == 0:
            return {**item, "answer": item["answer"][::-1] + "9"}  # wrong
        if i == 1:
            return {**item, "prompt": item["prompt"].replace("=", " =")}  # not the task's format
        if i == 2:
            return {"prompt": "41+35=", "answer": "67"}  # right answer, but no carry
        if i == 3:
            return {"prompt": excluded.prompt, "answer": excluded.answer}  # an evaluation item
        if i == 4:
            return {"prompt": "", "answer": "1"}
        return item

    backend = ScriptedBackend(oracle(task, edit))
    gen = _generator(task, backend, examples_per_request=10)
    examples, rejected = gen.generate(Allocation(counts={"add/carry": 10}), _context(task))
    assert len(backend.calls) == 1 and _max_items(backend) == [10]
    assert len(examples) == 5 and all(task.check(e.prompt, e.completion) for e in examples)
    assert all(e.skill == "add/carry" and e.source.generator == "llm" for e in examples)
    assert examples[0].source.model == "scripted-model"
    assert rejected == {
        "wrong_answer": 1,
        "unparseable_prompt": 1,
        "wrong_skill": 1,
        "excluded": 1,
        "empty_example": 1,
    }


def test_copies_of_the_problems_a_request_showed_are_rejected(task):
    """A model that echoes the prompt's sampled problems (SmolLM2-135M does) has made
    nothing: those are the task sampler's data, so they are not credited to the LLM."""
    fresh = {"prompt": "57+68=", "answer": "521"}  # 125, least significant digit first

    def echo(messages: list[dict[str, str]], sampling: Sampling) -> RawReply:
        user = messages[-1]["content"]
        shown = [json.loads(x) for x in user.splitlines() if x.startswith('{"prompt"')]
        assert len(shown) == 3 and fresh["prompt"] not in {s["prompt"] for s in shown}
        return _reply([*shown, fresh])

    gen = _generator(task, ScriptedBackend(echo), examples_per_request=4)
    examples, rejected = gen.generate(Allocation(counts={"add/carry": 4}), _context(task))
    assert [(e.prompt, e.completion) for e in examples] == [(fresh["prompt"], fresh["answer"])]
    assert rejected == {"copied_example": 3}


def test_requests_per_skill_and_the_prompt_shows_format_examples_and_errors(task):
    val = task.problems("val")
    errors = [
        ErrorCase(
            problem_id=p.id,
            skill=p.skill,
            prompt=p.prompt,
            student_answer="1",
            gold_answer=p.answer,
        )
        for p in (val[0], val[8])  # one add/carry error, one sub/borrow error
    ]
    report = EvalReport(
        split="val",
        skills={"add/carry": SkillStats(skill="add/carry", correct=0, total=8)},
        errors=errors,
    )
    backend = ScriptedBackend(oracle(task))
    gen = _generator(task, backend, examples_per_request=4)
    plan = Allocation(counts={"add/carry": 9, "sub/borrow": 3, "cmp/3d": 0})
    examples, rejected = gen.generate(plan, _context(task, report=report))
    assert sorted(_max_items(backend)) == [1, 3, 4, 4]  # ceil(9/4) + ceil(3/4) requests
    assert len(examples) == 12 and not rejected
    add = [u for u in backend.users if 'skill "add/carry"' in u]
    assert len(add) == 3
    shown = [json.loads(line) for u in add for line in u.splitlines() if line.startswith("{")]
    assert len(shown) == 9 and all(task.skill_of(s["prompt"]) == "add/carry" for s in shown)
    eval_prompts = {p.prompt for p in task.problems("val") + task.problems("test")}
    assert not {s["prompt"] for s in shown} & eval_prompts  # never an evaluation item
    assert "least significant digit first" in add[0]
    assert f"{val[0].prompt}  student: 1" in add[0] and val[8].prompt not in add[0]
    sub = next(u for u in backend.users if 'skill "sub/borrow"' in u)
    assert val[8].prompt in sub
    seeds = [s.seed for _, s, _ in backend.calls]
    assert len(set(seeds)) == 4 and all(s is not None for s in seeds)


def test_a_huge_plan_sends_no_more_requests_than_the_cap_needs(task):
    backend = ScriptedBackend(oracle(task))
    gen = _generator(task, backend, examples_per_request=10)
    plan = Allocation(counts={"add/carry": 10**12, "sub/borrow": 10**12})
    examples, rejected = gen.generate(plan, _context(task, max_examples=25))
    # 13 + 12 after clamping: ceil(13/10) + ceil(12/10) requests, 25 examples in all
    # (the oracle may repeat a prompt across requests: counted, not returned).
    assert sorted(_max_items(backend)) == [2, 3, 10, 10]
    assert len(examples) + rejected.get("duplicate", 0) == 25 and len(examples) >= 23
    backend.calls.clear()
    tree = TreeAction(kind="exploit", skill="add", allocation={"add/carry": 10**9})
    examples, _ = gen.generate(tree, _context(task, max_examples=7, step=1))
    assert _max_items(backend) == [7] and len(examples) == 7
    backend.calls.clear()
    assert gen.generate(plan, _context(task, max_examples=0, step=2)) == ([], {})
    assert backend.calls == []


def test_max_requests_per_step_counts_all_rounds_of_a_step(task):
    backend = ScriptedBackend(oracle(task))
    gen = _generator(task, backend, examples_per_request=5, max_requests_per_step=3)
    plan = Allocation(counts={"add/carry": 20, "sub/borrow": 20})
    examples, rejected = gen.generate(plan, _context(task))
    # Skills take turns, so the limit cuts both skills, not the last one entirely.
    assert len(backend.calls) == 3 and rejected == {"request_limit": 25}
    assert {e.skill for e in examples} == {"add/carry", "sub/borrow"}
    _, rejected = gen.generate(plan, _context(task, round_index=1))
    assert len(backend.calls) == 3 and rejected == {"request_limit": 40}
    gen.generate(plan, _context(task, step=1))  # a new step: a new allowance
    assert len(backend.calls) == 6


def test_llm_failures_are_counted_per_example_requested(task):
    def respond(messages: list[dict[str, str]], sampling: Sampling) -> RawReply | Exception:
        user = messages[-1]["content"]
        if '"add/carry"' in user:
            return LLMCallError("server_error", "boom")
        if '"sub/borrow"' in user:
            return RawReply("not json", "stop")
        return RawReply('{"examples": [{"prompt": "123?456=", "answer": "<"}]}', "length")

    backend = ScriptedBackend(respond)
    gen = _generator(task, backend, examples_per_request=4, max_attempts=2)
    plan = Allocation(counts={"add/carry": 6, "sub/borrow": 3, "cmp/3d": 2})
    examples, rejected = gen.generate(plan, _context(task))
    assert examples == []
    assert rejected == {"llm_server_error": 6, "llm_malformed_json": 3, "llm_length": 2}
    stats = gen.take_stats()
    assert stats["requests"] == 4 and stats["failed"] == {
        "length": 1,
        "malformed_json": 1,
        "server_error": 2,
    }
    assert stats["retried"] == {"length": 1, "malformed_json": 1, "server_error": 2}
    assert gen.take_stats()["requests"] == 0  # counts since the last call


def test_a_short_reply_counts_what_is_missing(task):
    backend = ScriptedBackend(oracle(task, lambda i, item: item if i < 3 else None))
    gen = _generator(task, backend, examples_per_request=10)
    examples, rejected = gen.generate(Allocation(counts={"cmp/3d": 10}), _context(task))
    assert len(examples) == 3 and rejected == {"short_reply": 7}


def test_rerun_with_cache_sends_no_request(task, tmp_path):
    plan = Allocation(counts={"add/carry": 12, "cmp/3d": 5})
    runs = []
    for _ in range(2):
        backend = ScriptedBackend(oracle(task))
        gen = _generator(task, backend, examples_per_request=5, cache_dir=str(tmp_path))
        examples, _ = gen.generate(plan, _context(task))
        runs.append((examples, len(backend.calls), gen.take_stats()))
    assert runs[0][1] == 4 and runs[1][1] == 0  # 5 + 5 + 2 and 5
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) == 17
    assert runs[1][2]["cached"] == runs[1][2]["requests"] == 4
    # Another step (or episode seed) asks anew: the seed is part of the request.
    backend = ScriptedBackend(oracle(task))
    gen = _generator(task, backend, examples_per_request=5, cache_dir=str(tmp_path))
    gen.generate(plan, _context(task, step=1))
    assert len(backend.calls) == 4


# -- free-text plans ----------------------------------------------------------------------


def test_text_plan_labels_examples_and_rejects_unknown_skills(task):
    def respond(messages: list[dict[str, str]], sampling: Sampling) -> RawReply:
        user = messages[-1]["content"]
        n = int(_TEXT_REQUEST.search(user).group(1))
        items = [
            {"skill": "add/carry", "prompt": "47+85=", "answer": "231"},
            {"skill": "borrow", "prompt": "52-38=", "answer": "41"},  # a unique last segment
            {"skill": "mul/2x1", "prompt": "12*3=", "answer": "63"},  # not a skill of this env
            {"skill": "cmp/3d", "prompt": "123?456=", "answer": ">"},  # wrong answer
            {"skill": "cmp/3d", "prompt": "47+58=", "answer": "501"},  # label does not fit
        ]
        return _reply(items[:n])

    backend = ScriptedBackend(respond)
    gen = _generator(task, backend, examples_per_request=5)
    plan = TextPlan(text="Drill carries – the student drops them.\n• add/carry × 5")
    examples, rejected = gen.generate(plan, _context(task))
    assert [(e.skill, e.prompt) for e in examples] == [
        ("add/carry", "47+85="),
        ("sub/borrow", "52-38="),
    ]
    assert rejected == {"unknown_skill": 1, "wrong_answer": 1, "wrong_skill": 1}
    assert _max_items(backend) == [5]  # the plan's stated count, not the cap
    user = backend.users[0]
    assert plan.text in user and "add/carry, sub/borrow, cmp/3d" in user
    assert backend.calls[0][2]["properties"]["examples"]["items"]["$ref"].endswith("Item")
    backend.calls.clear()
    gen.generate(TextPlan(text="Whatever helps most. 10**9 examples!"), _context(task, 12))
    assert sorted(_max_items(backend)) == [2, 5, 5]  # no stated count: the cap, in requests


# -- construction and plumbing ------------------------------------------------------------


def test_registry_builds_llm_and_refuses_bad_kwargs(task, tmp_path):
    backend = ScriptedBackend(oracle(task))
    gen = registry.build("generator", "llm", task=task, seed=3, llm=LLMClient(backend))
    assert isinstance(gen, LLMGenerator) and gen.seed == 3
    with pytest.raises(ConfigError, match=r"generator_kwargs\.llm"):
        registry.build("generator", "llm", task=task, seed=0)
    with pytest.raises(ConfigError, match="examples_per_request"):
        registry.build(
            "generator", "llm", task=task, seed=0, llm=LLMClient(backend), examples_per_request=0
        )
    with pytest.raises(ConfigError, match="model"):
        registry.build("generator", "llm", task=task, seed=0, llm={"backend": "openai"})
    bad = tmp_path / "p.txt"
    bad.write_text("[system]\nhi\n[skill]\n$n of $skil\n[text]\n$plan\n")
    with pytest.raises(ValueError, match=r"\$skil"):
        load_prompts(bad)
    bad.write_text("[system]\nhi\n[skill]\n$n\n")
    with pytest.raises(ValueError, match=r"\[text\]"):
        load_prompts(bad)


def test_generator_proxy_forwards_take_stats(monkeypatch, task):
    """Without a Ray cluster: a stub ``ray`` whose remote calls run in process."""
    from teachgym.agents.generators.remote import GeneratorProxy

    class Method:
        def __init__(self, fn: Callable[..., Any]) -> None:
            self.remote = fn

    class Actor:
        def __init__(self, generator: Any) -> None:
            self.generator = generator
            self.ready = Method(
                lambda: {"name": generator.name, "has_take_stats": hasattr(generator, "take_stats")}
            )
            self.take_stats = Method(lambda: generator.take_stats())

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get=lambda x: x))
    backend = ScriptedBackend(oracle(task))
    gen = _generator(task, backend)
    gen.generate(Allocation(counts={"cmp/3d": 3}), _context(task))
    proxy = GeneratorProxy(Actor(gen))
    assert proxy.take_stats()["requests"] == 1
    procedural = registry.build("generator", "procedural", task=task, seed=0)
    assert getattr(GeneratorProxy(Actor(procedural)), "take_stats", None) is None


# -- Unicode plans for the procedural generator -------------------------------------------


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("add/carry × 30\nborrow × 20", {"add/carry": 30, "sub/borrow": 20}),
        ("30 × add/carry", {"add/carry": 30}),
        (
            "- add/carry: 30\n* sub/borrow: 20\n• cmp/3d: 10",
            {"add/carry": 30, "sub/borrow": 20, "cmp/3d": 10},
        ),
        ("1. add/carry – 30\n2. sub/borrow — 20", {"add/carry": 30, "sub/borrow": 20}),
        (
            "300 examples of add/carry; 1,200 new problems for cmp/3d",
            {"add/carry": 300, "cmp/3d": 1200},
        ),
        ("**Carry** (40 examples)", {"add/carry": 40}),
        ("Teach carries: 30 examples of add/carry", {"add/carry": 30}),
        ("5 sub/borrow 2", {"sub/borrow": 2}),
        ("carry: 30%", {}),
        ("add/carry300", {}),
    ],
)
def test_parse_text_plan_tolerates_what_an_llm_writes(text, counts):
    assert parse_text_plan(text, ["add/carry", "sub/borrow", "cmp/3d"]).counts == counts


# -- end to end -----------------------------------------------------------------------------


def _standin_script(task: ArithmeticTask, steps: int) -> list:
    """Per step and skill: 10 problems with one wrong answer, then the 1 the env asks again."""
    rng = np.random.default_rng(99)
    script = []
    for _ in range(steps):
        for skill in ("add/carry", "cmp/3d"):
            problems = task.sample(skill, 11, rng)
            items = [{"prompt": p.prompt, "answer": p.answer} for p in problems]
            wrong = items[0]["answer"]
            items[0]["answer"] = "=" if wrong != "=" else "<"
            if skill == "add/carry":
                items[0]["answer"] = wrong + "1"
            ask = 'new, varied problems of the skill "' + skill + '"'
            script.append(json_reply({"examples": items[:10]}, match=f"Write 10 {ask}"))
            script.append(json_reply({"examples": items[10:]}, match=f"Write 1 {ask}"))
    return script


def _episode(base_url: str, cache_dir: str) -> list[dict[str, Any]]:
    """The smoke config with a tiny budget and the ``llm`` generator; 2 steps of a fixed plan."""
    llm = {
        "backend": "openai",
        "model": "stand-in-model",
        "base_url": base_url,
        "api_key": "EMPTY",
        "cache_dir": cache_dir,
        "backoff_s": 0.0,
        "max_attempts": 1,
    }
    cfg = load_config(
        SMOKE,
        {
            "budget": 40,
            "examples_per_step": 20,
            "max_steps": 2,
            "threads": 1,
            "generator": "llm",
            "generator_kwargs": {"examples_per_request": 10, "llm": llm},
        },
    )
    env = gym.make(cfg.env, config=cfg)
    infos = []
    try:
        env.reset(seed=0)
        done = False
        while not done:
            plan = Allocation(counts={"add/carry": 10, "cmp/3d": 10})
            _, _, terminated, truncated, info = env.step(plan)
            infos.append(info)
            done = terminated or truncated
    finally:
        env.close()
    return infos


def test_episode_on_skill_list_with_the_llm_generator_over_http(tmp_path):
    task = ArithmeticTask(val_per_skill=8, test_per_skill=8)
    with StandIn(_standin_script(task, steps=2)) as server:
        infos = _episode(server.base_url, str(tmp_path / "cache"))
        assert server.unscripted == 0 and server.remaining == 0
        assert len(server.requests) == 8
    assert len(infos) == 2
    for info in infos:
        assert info["examples_accepted"] == 20
        assert info["rejected"] == {"wrong_answer": 2}
        stats = info["llm"]["generator"]
        assert stats["requests"] == stats["ok"] == 4 and stats["cached"] == 0
        assert stats["prompt_tokens"] == 4 * 7 and stats["failed"] == {}
    body = server.requests[0]
    assert body["model"] == "stand-in-model" and body["seed"] is not None
    # The rerun: every request is served from the cache, and the episode is the same.
    with StandIn() as server:
        again = _episode(server.base_url, str(tmp_path / "cache"))
        assert server.requests == []
    assert [i["llm"]["generator"]["cached"] for i in again] == [4, 4]
    assert [i["accuracy"] for i in again] == [i["accuracy"] for i in infos]
