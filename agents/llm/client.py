"""The client that turns a batch of requests into a batch of replies, whatever the backend.

Everything a data-generation run needs and a backend should not each reimplement lives
here: bounded concurrency, a timeout per attempt, retries with backoff for the failures
that a second try can fix (including a cut or malformed reply), a disk cache, and
counters. A failed request becomes ``LLMReply(error=reason)`` in its place in the
list (never an exception, never silently dropped), so a caller can count its losses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from teachgym.agents.llm.cache import ReplyCache, cache_key
from teachgym.agents.llm.schema import parse_reply, response_schema
from teachgym.agents.llm.types import LLMBackend, LLMCallError, LLMReply, LLMRequest, RawReply
from teachgym.errors import ConfigError


@dataclass
class _Counts:
    requests: int = 0
    cached: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_failure: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "cached": self.cached,
            "ok": self.ok,
            "failed": dict(sorted(self.failed.items())),
            "retried": dict(sorted(self.retried.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if self.last_failure is not None:
            out["last_failure"] = self.last_failure
        return out


class _Backoff:
    """Exponential backoff with jitter from a private RNG: the jitter spreads retries
    out but must never consume the global ``random`` stream a seeded run depends on."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s, self.max_s = base_s, max_s
        self._rng = random.Random()

    def __call__(self, retry_state: Any) -> float:
        if self.base_s <= 0:
            return 0.0
        delay = min(self.max_s, self.base_s * 2 ** (retry_state.attempt_number - 1))
        return delay * (0.5 + 0.5 * self._rng.random())


class LLMClient:
    """Sends requests through a backend with retries, a timeout, a cache and counters.

    ``stats()``/``take_stats()`` count: ``requests`` (each request once), ``cached``
    (served from disk), ``ok`` (ended with a reply, cached ones included), ``failed``
    and ``retried`` by reason (a retry counted per failed attempt that was tried again),
    and tokens spent by the backend (failed attempts included, cache hits cost none).

    Only :class:`LLMCallError` counts as a failed attempt; any other exception from a
    backend is a bug and propagates. Identical requests in one batch are all sent
    (sampling at temperature > 0 should give different replies); vary ``seed`` to
    keep distinct samples apart in the cache.
    """

    def __init__(
        self,
        backend: LLMBackend,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        max_concurrency: int = 8,
        max_attempts: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float = 60.0,
    ) -> None:
        for name, value, low in (
            ("max_concurrency", max_concurrency, 1),
            ("max_attempts", max_attempts, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if backoff_s < 0 or max_backoff_s < 0:
            raise ConfigError(f"backoff_s and max_backoff_s must be >= 0, got {backoff_s}")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.backend = backend
        self.cache = ReplyCache(cache_dir) if cache_dir is not None else None
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self._backoff = _Backoff(backoff_s, max_backoff_s)
        self._lock = threading.Lock()  # complete() may run in several threads at once
        self._total = _Counts()
        self._since = _Counts()
        self._schemas: dict[type[BaseModel], dict[str, Any]] = {}

    # -- public API --------------------------------------------------------------

    def complete(self, requests: Sequence[LLMRequest]) -> list[LLMReply]:
        """Blocking ``acomplete``. Inside a running event loop (a notebook, an async
        caller) the batch runs on a fresh loop in a worker thread instead of failing
        (blocking that loop meanwhile: async code should await ``acomplete``)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._complete_and_close(requests))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm-client") as pool:
            return pool.submit(asyncio.run, self._complete_and_close(requests)).result()

    async def acomplete(self, requests: Sequence[LLMRequest]) -> list[LLMReply]:
        """One reply per request, in request order; a failed request holds its reason."""
        schemas = [self._schema(r.response_model) for r in requests]  # refuse before sending
        semaphore = asyncio.Semaphore(self.max_concurrency)
        jobs = [self._one(r, s, semaphore) for r, s in zip(requests, schemas, strict=True)]
        return list(await asyncio.gather(*jobs))

    @property
    def endpoint(self) -> str:
        """Where requests go, for messages: the server URL, else the backend and model."""
        url = getattr(self.backend, "base_url", None)
        return str(url) if url else f"{type(self.backend).__name__}({self.backend.model})"

    def stats(self) -> dict[str, Any]:
        """Totals since the client was made (``last_failure``: the newest failed
        request's error and where it was sent, present once one failed)."""
        with self._lock:
            return self._total.as_dict()

    def take_stats(self) -> dict[str, Any]:
        """Counts since the previous ``take_stats`` (for per-step logging), then resets them."""
        with self._lock:
            out, self._since = self._since.as_dict(), _Counts()
        return out

    # -- internals ---------------------------------------------------------------

    async def _complete_and_close(self, requests: Sequence[LLMRequest]) -> list[LLMReply]:
        # complete() owns this loop: let the backend close what it bound to it (e.g. an
        # HTTP connection pool), since the loop is gone after this call.
        try:
            return await self.acomplete(requests)
        finally:
            aclose = getattr(self.backend, "aclose", None)
            if aclose is not None:
                await aclose()

    def _schema(self, model: type[BaseModel] | None) -> dict[str, Any] | None:
        if model is None:
            return None
        if model not in self._schemas:
            self._schemas[model] = response_schema(model)
        return self._schemas[model]

    def _count(self, reply: LLMReply, retried: Sequence[str]) -> None:
        with self._lock:
            for counts in (self._total, self._since):
                counts.requests += 1
                counts.cached += reply.cached
                counts.prompt_tokens += reply.prompt_tokens
                counts.completion_tokens += reply.completion_tokens
                counts.retried.update(retried)
                if reply.ok:
                    counts.ok += 1
                else:
                    counts.failed[str(reply.error)] += 1
                    counts.last_failure = f"{reply.detail or reply.error} ({self.endpoint})"

    async def _one(
        self,
        request: LLMRequest,
        schema: dict[str, Any] | None,
        semaphore: asyncio.Semaphore,
    ) -> LLMReply:
        key = None
        if self.cache is not None:
            key = cache_key(self.backend.model, request.messages, request.sampling, schema)
            hit = self.cache.get(key)
            if hit is not None:
                try:
                    parsed = self._check(request, hit)
                except LLMCallError:
                    pass  # an entry the current model rejects is just a miss
                else:
                    reply = LLMReply(text=hit.text, parsed=parsed, cached=True)
                    self._count(reply, ())
                    return reply
        reply, retried = await self._with_retries(request, schema, semaphore, key)
        self._count(reply, retried)
        return reply

    async def _with_retries(
        self,
        request: LLMRequest,
        schema: dict[str, Any] | None,
        semaphore: asyncio.Semaphore,
        key: str | None,
    ) -> tuple[LLMReply, list[str]]:
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        retried: list[str] = []
        spent = [0, 0]  # prompt, completion tokens over all attempts

        def note_retry(state: Any) -> None:
            retried.append(state.outcome.exception().reason)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._backoff,
            retry=retry_if_exception(lambda e: isinstance(e, LLMCallError) and e.retryable),
            before_sleep=note_retry,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    async with semaphore:  # held per attempt, not across backoff sleeps
                        raw = await self._send(request, schema)
                    spent[0] += raw.prompt_tokens
                    spent[1] += raw.completion_tokens
                    parsed = self._check(request, raw)
        except LLMCallError as err:
            reply = LLMReply(error=err.reason, detail=str(err)[:300], attempts=attempts)
        else:
            reply = LLMReply(text=raw.text, parsed=parsed, attempts=attempts)
            if key is not None and self.cache is not None:
                self.cache.put(key, raw)
        reply.prompt_tokens, reply.completion_tokens = spent
        return reply, retried

    async def _send(self, request: LLMRequest, schema: dict[str, Any] | None) -> RawReply:
        send = self.backend.send(request.messages, request.sampling, schema)
        try:
            return await asyncio.wait_for(send, self.timeout_s)
        except asyncio.TimeoutError as err:
            raise LLMCallError("timeout", f"no reply within {self.timeout_s}s") from err

    @staticmethod
    def _check(request: LLMRequest, raw: RawReply) -> BaseModel | None:
        """Turn a reply that cannot be used into the reason why (which decides a retry)."""
        if raw.finish_reason == "length":
            raise LLMCallError("length", f"cut at max_tokens={request.sampling.max_tokens}")
        if raw.text is None or not raw.text.strip():
            raise LLMCallError("empty", f"finish_reason={raw.finish_reason!r}")
        if request.response_model is None:
            return None
        return parse_reply(request.response_model, raw.text)
