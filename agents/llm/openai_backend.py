"""A backend for any OpenAI-compatible chat server: OpenAI itself, a vLLM or SGLang server.

The SDK's own retries are switched off (``max_retries=0``): the client retries, with
reasons and counters, and two layers of retries would multiply the waiting. SDK
errors become :class:`LLMCallError` reasons so the client can tell a 429 (wait and
retry) from a 400 (retrying will not help).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Sequence
from typing import Any

from teachgym.agents.llm.types import LLMCallError, RawReply, Sampling
from teachgym.errors import ConfigError, MissingDependency


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependency("OpenAIBackend", "openai") from err
    return openai


def chat_kwargs(
    model: str,
    messages: Sequence[dict[str, str]],
    sampling: Sampling,
    schema: dict[str, Any] | None,
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The arguments of ``chat.completions.create`` for one request (pure, so testable
    without a server)."""
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.seed is not None:
        kwargs["seed"] = sampling.seed
    if sampling.stop:
        kwargs["stop"] = list(sampling.stop)
    if schema is not None:
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in schema.get("title", ""))
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": name[:64] or "reply", "schema": schema, "strict": True},
        }
    if extra_body:
        kwargs["extra_body"] = dict(extra_body)
    return kwargs


class OpenAIBackend:
    """Sends one attempt through ``openai.AsyncOpenAI``.

    An SDK client holds an HTTP connection pool bound to the event loop that first used
    it, and ``LLMClient.complete`` runs each batch on a fresh loop; so one SDK client is
    kept per loop, and ``aclose`` closes the current loop's.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self._openai = _import_openai()
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if key is None:
            if self.base_url is None:
                raise ConfigError(
                    "OpenAIBackend: no api_key and OPENAI_API_KEY is not set "
                    "(a local server takes any key, e.g. 'EMPTY', with base_url)"
                )
            key = "EMPTY"
        self._api_key = key
        self.timeout_s = timeout_s
        self.extra_body = dict(extra_body or {})
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self.timeout_s,
                max_retries=0,
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    async def send(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        schema: dict[str, Any] | None,
    ) -> RawReply:
        kwargs = chat_kwargs(self.model, messages, sampling, schema, self.extra_body)
        try:
            response = await self._client().chat.completions.create(**kwargs)
        except self._openai.APIError as err:
            raise self._as_call_error(err) from err
        if not response.choices:
            return RawReply(text=None, finish_reason=None)
        choice = response.choices[0]
        usage = response.usage
        return RawReply(
            text=choice.message.content if choice.message is not None else None,
            finish_reason=choice.finish_reason,
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
        )

    def _as_call_error(self, err: Exception) -> LLMCallError:
        openai = self._openai
        message = str(err)[:300]
        if isinstance(err, openai.APITimeoutError):  # a subclass of APIConnectionError
            return LLMCallError("timeout", message)
        if isinstance(err, openai.APIConnectionError):
            return LLMCallError("transport", message)
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            if status == 429:
                return LLMCallError("rate_limited", message)
            if status >= 500:
                return LLMCallError("server_error", message)
            return LLMCallError("client_error", f"HTTP {status}: {message}")
        # A reply the SDK could not read (APIResponseValidationError and the like): the
        # server misbehaved, which a second try may not repeat.
        return LLMCallError("server_error", message)
