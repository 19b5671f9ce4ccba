"""The vocabulary shared by the LLM client, its backends, and the components built on it.

Kept free of any backend import (no ``openai``, no ``vllm``) so that teachers
and generators can name these types, and tests can script a backend, on a
machine that has neither installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

#: Why a request ended without a usable reply. Every reason is counted, never
#: silently dropped; the retryable ones are retried with backoff first.
FAILURE_REASONS = (
    "transport",  # connection refused/reset, DNS, TLS: retryable
    "timeout",  # no reply within the client's timeout: retryable
    "rate_limited",  # HTTP 429: retryable
    "server_error",  # HTTP 5xx: retryable
    "client_error",  # other HTTP 4xx (bad request, auth): not retryable
    "empty",  # a reply with no text: retryable
    "length",  # finish_reason == "length", the reply was cut: retryable
    "malformed_json",  # the text does not parse as JSON: retryable
    "schema",  # JSON that the response model rejects: retryable
)


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; part of the cache key, so two runs that differ here never
    share replies."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class LLMRequest:
    """One chat request. With ``response_model`` the reply must be that model as JSON."""

    messages: list[dict[str, str]]
    response_model: type[BaseModel] | None = None
    sampling: Sampling = field(default_factory=Sampling)


@dataclass
class RawReply:
    """What a backend got back for one attempt, before any parsing."""

    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class LLMReply:
    """The outcome of one request after retries: a reply, or the reason there is none."""

    text: str | None = None
    parsed: BaseModel | None = None
    error: str | None = None  # one of FAILURE_REASONS when the request failed
    detail: str | None = None  # the last attempt's error message, when the request failed
    attempts: int = 0
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class LLMCallError(Exception):
    """A backend's failure for one attempt, with its reason (see FAILURE_REASONS)."""

    def __init__(self, reason: str, message: str = "", retryable: bool | None = None) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(
                f"unknown failure reason {reason!r}; expected one of {FAILURE_REASONS}"
            )
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.retryable = reason != "client_error" if retryable is None else retryable


@runtime_checkable
class LLMBackend(Protocol):
    """Sends one attempt of one request. Raises :class:`LLMCallError` for transport or HTTP
    failures; returns the raw text otherwise (parsing and validation are the client's)."""

    model: str

    async def send(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        schema: dict[str, Any] | None,
    ) -> RawReply: ...
