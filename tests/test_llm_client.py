"""The LLM client driven through the real OpenAI SDK against a scripted stand-in server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from llm_standin import Scripted, StandIn, cut, empty, json_reply, reply, slow, status
from pydantic import BaseModel, Field

from teachgym.agents.llm import (
    LLMCallError,
    LLMClient,
    LLMRequest,
    OpenAIBackend,
    RawReply,
    Sampling,
    make_client,
    parse_reply,
    response_schema,
)
from teachgym.agents.llm.vllm_backend import raw_reply, sampling_kwargs
from teachgym.errors import ConfigError


class Answer(BaseModel):
    value: int
    reason: str = Field(max_length=40)


class Terse(BaseModel):  # accepts Answer's replies, but its schema differs: no shared entries
    value: int
    reason: str = Field(max_length=30)


GOOD = {"value": 3, "reason": "one plus two"}
TIMEOUT_S = 0.5  # only for the timeout tests: building the SDK client alone can take 0.1 s


@pytest.fixture
def server() -> Iterator[StandIn]:
    with StandIn() as standin:
        yield standin


def client_for(server: StandIn, **kw: Any) -> LLMClient:
    backend = OpenAIBackend("stand-in-model", base_url=server.base_url, api_key="EMPTY")
    options: dict[str, Any] = {"max_attempts": 3, "backoff_s": 0.0, "timeout_s": 10.0}
    return LLMClient(backend, **{**options, **kw})


def ask(
    text: str = "what is 1+2?", model: type[BaseModel] | None = Answer, **kw: Any
) -> LLMRequest:
    return LLMRequest([{"role": "user", "content": text}], model, Sampling(**kw))


# -- structured replies and what is sent ------------------------------------------------


def test_structured_reply_parses_and_the_request_carries_the_schema(server: StandIn) -> None:
    server.add(json_reply(GOOD))
    client = client_for(server)
    sampling = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 77, "seed": 5, "stop": ("##",)}
    [out] = client.complete([ask(**sampling)])
    assert out.ok and out.attempts == 1 and not out.cached
    assert out.parsed == Answer(**GOOD)
    assert (out.prompt_tokens, out.completion_tokens) == (7, 5)
    [body] = server.requests
    assert body["model"] == "stand-in-model"
    assert body["messages"] == [{"role": "user", "content": "what is 1+2?"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 77)
    assert (body["seed"], body["stop"]) == (5, ["##"])
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Answer" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == response_schema(Answer)
    assert fmt["json_schema"]["schema"]["properties"]["reason"]["maxLength"] == 40


def test_plain_text_request_sends_no_response_format(server: StandIn) -> None:
    server.add(reply("just words"))
    [out] = client_for(server).complete([ask(model=None)])
    assert out.ok and out.text == "just words" and out.parsed is None
    assert "response_format" not in server.requests[0]
    assert "seed" not in server.requests[0] and "stop" not in server.requests[0]


# -- retries ---------------------------------------------------------------------------

BAD: dict[str, Any] = {
    "malformed_json": lambda: reply('{"value": 3, "reason": '),
    "schema": lambda: json_reply({"value": "three", "reason": "x"}),
    "empty": lambda: empty(),
    "length": lambda: cut(),
    "timeout": lambda: slow(json.dumps(GOOD), delay_s=TIMEOUT_S + 0.3),
    "rate_limited": lambda: status(429),
    "server_error": lambda: status(500),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_a_failed_attempt_is_retried_and_a_later_good_one_wins(
    server: StandIn, reason: str
) -> None:
    server.add(BAD[reason](), json_reply(GOOD))
    client = client_for(server, timeout_s=TIMEOUT_S if reason == "timeout" else 10.0)
    [out] = client.complete([ask()])
    assert out.ok, out.error
    assert out.parsed == Answer(**GOOD) and out.attempts == 2
    assert len(server.requests) == 2
    stats = client.take_stats()
    assert stats["retried"] == {reason: 1}
    assert stats["failed"] == {} and stats["ok"] == 1 and stats["requests"] == 1


@pytest.mark.parametrize("reason", sorted(BAD))
def test_a_request_failing_every_attempt_is_counted_under_its_reason(
    server: StandIn, reason: str
) -> None:
    server.add(*(BAD[reason]() for _ in range(3)))
    client = client_for(server, timeout_s=TIMEOUT_S if reason == "timeout" else 10.0)
    [out] = client.complete([ask()])
    assert not out.ok and out.error == reason
    assert out.attempts == 3 and out.parsed is None
    assert len(server.requests) == 3 and server.unscripted == 0
    stats = client.take_stats()
    assert stats["failed"] == {reason: 1} and stats["retried"] == {reason: 2}
    assert stats["ok"] == 0 and stats["requests"] == 1


def test_a_400_is_not_retried(server: StandIn) -> None:
    server.add(status(400), json_reply(GOOD))
    client = client_for(server)
    [out] = client.complete([ask()])
    assert out.error == "client_error" and out.attempts == 1
    assert len(server.requests) == 1
    assert client.take_stats()["retried"] == {}


def test_an_unreachable_server_is_a_transport_failure() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY")
    client = LLMClient(backend, max_attempts=2, backoff_s=0.0, timeout_s=5.0)
    [out] = client.complete([ask()])
    assert out.error == "transport" and out.attempts == 2
    assert client.stats()["retried"] == {"transport": 1}


def test_the_fence_around_json_is_tolerated(server: StandIn) -> None:
    server.add(reply("```json\n" + json.dumps(GOOD) + "\n```"))
    [out] = client_for(server).complete([ask()])
    assert out.ok and out.parsed == Answer(**GOOD)


# -- order, concurrency, counters --------------------------------------------------------


def test_results_keep_request_order_with_mixed_outcomes_under_concurrency(
    server: StandIn,
) -> None:
    n = 12
    for i in range(n):
        key = f"question {i:02d}?"
        body = json.dumps({"value": i, "reason": f"r{i}"})
        if i % 4 == 1:  # fails every attempt
            server.add(*(status(500, match=key) for _ in range(2)))
        elif i % 4 == 2:  # fails once, then succeeds
            server.add(reply("nope", match=key), slow(body, 0.01 * (n - i), match=key))
        else:  # the early ones answer last
            server.add(slow(body, 0.02 * (n - i), match=key))
    client = client_for(server, max_attempts=2, max_concurrency=4)
    outs = client.complete([ask(f"question {i:02d}?") for i in range(n)])
    for i, out in enumerate(outs):
        if i % 4 == 1:
            assert out.error == "server_error", i
        else:
            assert out.ok and out.parsed == Answer(value=i, reason=f"r{i}"), i
    stats = client.take_stats()
    assert stats["requests"] == n and stats["ok"] == 9 and stats["failed"] == {"server_error": 3}
    assert stats["retried"] == {"malformed_json": 3, "server_error": 3}
    assert server.remaining == 0 and server.unscripted == 0


def test_concurrency_is_bounded(server: StandIn) -> None:
    active = 0
    peak = 0

    class Counting:
        model = "counting"

        async def send(self, messages: Any, sampling: Sampling, schema: Any) -> RawReply:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            return RawReply(json.dumps(GOOD), "stop")

    client = LLMClient(Counting(), max_concurrency=3)
    outs = client.complete([ask() for _ in range(10)])
    assert all(o.ok for o in outs) and peak == 3
    assert client.complete([]) == []


def test_take_stats_resets_and_stats_keeps_totals(server: StandIn) -> None:
    server.add(json_reply(GOOD), json_reply(GOOD), status(400))
    client = client_for(server)
    client.complete([ask(), ask()])
    first = client.take_stats()
    assert first["requests"] == 2 and first["ok"] == 2
    assert (first["prompt_tokens"], first["completion_tokens"]) == (14, 10)
    client.complete([ask()])
    second = client.take_stats()
    assert second["requests"] == 1 and second["ok"] == 0
    assert second["failed"] == {"client_error": 1} and second["prompt_tokens"] == 0
    assert client.take_stats()["requests"] == 0
    total = client.stats()
    assert total["requests"] == 3 and total["ok"] == 2 and total["failed"] == {"client_error": 1}


def test_complete_works_inside_a_running_event_loop(server: StandIn) -> None:
    server.add(json_reply(GOOD), json_reply(GOOD))
    client = client_for(server)

    async def caller() -> Any:
        sync_outs = client.complete([ask()])  # a notebook or an async teacher calling sync code
        async_outs = await client.acomplete([ask()])
        return sync_outs + async_outs

    outs = asyncio.run(caller())
    assert [o.parsed for o in outs] == [Answer(**GOOD)] * 2


def test_backoff_jitter_leaves_the_global_random_stream_alone(server: StandIn) -> None:
    server.add(status(429), json_reply(GOOD))
    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    [out] = client_for(server, backoff_s=0.01).complete([ask()])
    assert out.ok and out.attempts == 2
    assert random.random() == expected


# -- cache -------------------------------------------------------------------------------


def test_the_cache_answers_a_repeat_without_sending(server: StandIn, tmp_path: Path) -> None:
    server.add(json_reply(GOOD))
    client = client_for(server, cache_dir=str(tmp_path))
    [first] = client.complete([ask()])
    assert first.ok and not first.cached and len(server.requests) == 1
    [again] = client_for(server, cache_dir=str(tmp_path)).complete([ask()])  # a rerun
    assert again.cached and again.parsed == first.parsed and again.text == first.text
    assert len(server.requests) == 1 and server.unscripted == 0
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1 and files[0].parent.parent == tmp_path  # sharded
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize(
    "changed",
    [
        {"temperature": 0.5},
        {"seed": 1},
        {"max_tokens": 99},
        {"stop": ("x",)},
        {"model": Terse},
        {"text": "what is 2+2?"},
    ],
)
def test_a_changed_request_misses_the_cache(
    server: StandIn, tmp_path: Path, changed: dict[str, Any]
) -> None:
    server.add(json_reply(GOOD), json_reply({"value": 1, "reason": "short"}))
    client = client_for(server, cache_dir=str(tmp_path))
    client.complete([ask()])
    [out] = client.complete([ask(**changed)])
    assert out.ok and not out.cached and len(server.requests) == 2
    assert client.take_stats()["cached"] == 0


def test_failures_are_not_cached(server: StandIn, tmp_path: Path) -> None:
    server.add(status(400), json_reply(GOOD))
    client = client_for(server, cache_dir=str(tmp_path))
    assert client.complete([ask()])[0].error == "client_error"
    [out] = client.complete([ask()])
    assert out.ok and not out.cached and len(server.requests) == 2
    stats = client.stats()
    assert stats["cached"] == 0 and stats["ok"] == 1


def test_cache_hits_are_counted_and_cost_no_tokens(server: StandIn, tmp_path: Path) -> None:
    server.add(json_reply(GOOD))
    client = client_for(server, cache_dir=str(tmp_path))
    client.complete([ask()])
    client.take_stats()
    [out] = client.complete([ask()])
    assert out.cached and out.prompt_tokens == 0
    stats = client.take_stats()
    assert stats["cached"] == 1 and stats["ok"] == 1 and stats["prompt_tokens"] == 0


# -- schema ------------------------------------------------------------------------------


class Item(BaseModel):
    name: str  # unbounded, two levels down


class Nested(BaseModel):
    items: list[Item] = Field(max_length=3)


class Unbounded(BaseModel):
    tags: list[str] = Field(max_length=2)  # the list is bounded, its strings are not


class Bounded(BaseModel):
    kind: Literal["a", "b"]
    note: str | None = Field(default=None, max_length=8)
    pair: tuple[int, int]
    items: list[Answer] = Field(max_length=4)


@pytest.mark.parametrize(
    ("fields", "path", "what"),
    [
        ({"text": (str, ...)}, "M.text", "maxLength"),
        ({"xs": (list[int], ...)}, "M.xs", "maxItems"),
        ({"opt": (str | None, None)}, "M.opt", "maxLength"),
        ({"d": (dict[str, int], ...)}, "M.d", "dict"),
        ({"a": (Any, ...)}, "M.a", "Any"),
    ],
)
def test_response_schema_refuses_unbounded_fields(
    fields: dict[str, Any], path: str, what: str
) -> None:
    from pydantic import create_model

    model = create_model("M", **fields)
    with pytest.raises(ValueError, match=rf"^{path}: .*{what}"):
        response_schema(model)


def test_response_schema_follows_refs_and_names_the_path() -> None:
    with pytest.raises(ValueError, match=r"^Nested\.items\[\]\.name: string without maxLength"):
        response_schema(Nested)
    with pytest.raises(ValueError, match=r"^Unbounded\.tags\[\]: string"):
        response_schema(Unbounded)


def test_response_schema_accepts_bounded_models_and_forbids_extra_keys() -> None:
    schema = response_schema(Bounded)
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Answer"]["additionalProperties"] is False
    assert response_schema(Bounded) == schema  # no state leaks between calls


def test_an_unbounded_model_is_refused_before_anything_is_sent(server: StandIn) -> None:
    with pytest.raises(ValueError, match=r"Nested\.items"):
        client_for(server).complete([ask(), ask(model=Nested)])
    assert server.requests == []


def test_parse_reply_reasons() -> None:
    assert parse_reply(Answer, " " + json.dumps(GOOD) + "\n") == Answer(**GOOD)
    assert parse_reply(Answer, "```\n" + json.dumps(GOOD) + "\n```") == Answer(**GOOD)
    with pytest.raises(LLMCallError) as err:
        parse_reply(Answer, "{'value': 3}")
    assert err.value.reason == "malformed_json"
    with pytest.raises(LLMCallError) as err:
        parse_reply(Answer, json.dumps({"value": 3, "reason": "x" * 41}))
    assert err.value.reason == "schema"


# -- make_client -------------------------------------------------------------------------


def test_make_client_builds_from_a_mapping_and_passes_a_client_through(
    server: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_KEY", "sk-standin")
    spec = {
        "model": "stand-in-model",
        "base_url": server.base_url,
        "api_key_env": "STANDIN_KEY",
        "max_attempts": 2,
        "backoff_s": 0,
        "timeout_s": 2,
        "max_concurrency": 3,
        "cache_dir": tmp_path,
    }
    client = make_client(spec)
    assert make_client(client) is client
    assert (client.max_attempts, client.max_concurrency, client.timeout_s) == (2, 3, 2)
    assert "sk-standin" not in repr(client.backend)
    server.add(json_reply(GOOD))
    assert client.complete([ask()])[0].ok


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": "m", "base_url": "http://127.0.0.1:9/v1", "max_attempt": 2}, "max_attempt"),
        ({"base_url": "http://127.0.0.1:9/v1"}, "llm.model"),
        ({"model": "m", "backend": "ollama"}, "llm.backend"),
        ({"model": "m", "backend": "vllm", "base_url": "http://127.0.0.1:9"}, "llm.base_url"),
        ({"model": "m", "engine_kwargs": {}}, "llm.engine_kwargs"),
        ({"model": "m", "base_url": "http://x", "api_key_env": "TG_NO_SUCH_VAR"}, "TG_NO_SUCH"),
        ({"model": "m", "base_url": "http://x", "max_attempts": 0}, "max_attempts"),
    ],
)
def test_make_client_errors_name_the_key(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_client(spec)


def test_make_client_refuses_a_non_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        make_client(["openai"])  # type: ignore[arg-type]


def test_importing_the_package_imports_no_backend_library() -> None:
    code = (
        "import sys, teachgym.agents.llm as m; m.make_client; "
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'openai', 'vllm', 'torch'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


# -- the vLLM backend: its pure parts here, the engine only where vLLM is installed --------


def test_vllm_sampling_kwargs() -> None:
    sampling = Sampling(temperature=0.3, top_p=0.8, max_tokens=12, seed=4, stop=("\n",))
    kwargs = sampling_kwargs(sampling, {"type": "object"})
    assert kwargs == {
        "temperature": 0.3,
        "top_p": 0.8,
        "max_tokens": 12,
        "seed": 4,
        "stop": ["\n"],
        "structured_outputs": {"json": {"type": "object"}},
    }
    assert "structured_outputs" not in sampling_kwargs(Sampling(), None)
    assert sampling_kwargs(Sampling(), None)["stop"] is None


def test_vllm_raw_reply_maps_finish_reason_and_tokens() -> None:
    completion = SimpleNamespace(text='{"a": 1}', finish_reason="length", token_ids=[1, 2, 3])
    output = SimpleNamespace(outputs=[completion], prompt_token_ids=[9] * 11)
    assert raw_reply(output) == RawReply('{"a": 1}', "length", 11, 3)
    assert raw_reply(SimpleNamespace(outputs=[], prompt_token_ids=[1])).text is None


def test_scripted_keys_prefer_a_match(server: StandIn) -> None:
    # the stand-in itself: a keyed entry is found even behind an unkeyed one
    server.add(Scripted(text='{"value": 1, "reason": "a"}'), json_reply(GOOD, match="KEY"))
    outs = client_for(server, max_concurrency=1).complete([ask("KEY"), ask("other")])
    assert [o.parsed.value for o in outs if o.parsed] == [3, 1]


def test_a_corrupt_cache_entry_is_a_miss_and_is_replaced(server: StandIn, tmp_path: Path) -> None:
    server.add(json_reply(GOOD), json_reply(GOOD))
    client = client_for(server, cache_dir=tmp_path)
    client.complete([ask()])
    [entry] = tmp_path.rglob("*.json")
    entry.write_text('{"text": ')  # a truncated write from some older, non-atomic tool
    [out] = client.complete([ask()])
    assert out.ok and not out.cached and len(server.requests) == 2
    [out] = client.complete([ask()])
    assert out.cached and len(server.requests) == 2


def test_the_engine_backend_turns_vllm_usage_statistics_off_before_importing_it(monkeypatch):
    # vLLM posts usage statistics to a remote server unless told not to, at import time.
    from teachgym.agents.llm import VLLMEngineBackend

    for key in ("VLLM_NO_USAGE_STATS", "VLLM_DO_NOT_TRACK", "DO_NOT_TRACK", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setitem(sys.modules, "vllm", None)  # importing it fails, wherever it is installed
    with pytest.raises(ImportError):
        VLLMEngineBackend("some/model")
    assert os.environ["VLLM_NO_USAGE_STATS"] == "1" and os.environ["DO_NOT_TRACK"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ  # a hub id is the caller's choice here
