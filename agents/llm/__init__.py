"""LLM calls for teachers and generators: one client, an OpenAI-compatible or in-process
vLLM backend, structured replies checked against pydantic models.

Importing this package imports neither ``openai`` nor ``vllm`` nor ``torch``: backends
import their (optional) library when built, so a config that names no LLM costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from teachgym.agents.llm.client import LLMClient
from teachgym.agents.llm.openai_backend import OpenAIBackend
from teachgym.agents.llm.schema import parse_reply, response_schema
from teachgym.agents.llm.types import (
    FAILURE_REASONS,
    LLMBackend,
    LLMCallError,
    LLMReply,
    LLMRequest,
    RawReply,
    Sampling,
)
from teachgym.agents.llm.vllm_backend import VLLMEngineBackend
from teachgym.errors import ConfigError

__all__ = [
    "FAILURE_REASONS",
    "LLMBackend",
    "LLMCallError",
    "LLMClient",
    "LLMReply",
    "LLMRequest",
    "OpenAIBackend",
    "RawReply",
    "Sampling",
    "VLLMEngineBackend",
    "make_client",
    "parse_reply",
    "response_schema",
]

_CLIENT_KEYS = ("timeout_s", "max_concurrency", "max_attempts", "backoff_s", "max_backoff_s")
_BACKEND_KEYS = {
    "openai": ("base_url", "api_key", "api_key_env", "extra_body"),
    "vllm": ("engine_kwargs",),
}
_KNOWN = {
    "backend",
    "model",
    "cache_dir",
    *_CLIENT_KEYS,
    *(k for v in _BACKEND_KEYS.values() for k in v),
}


def make_client(spec: LLMClient | Mapping[str, Any]) -> LLMClient:
    """An LLMClient from a config mapping (or the client itself, so callers accept both).

    Keys: ``backend`` ("openai", the default, or "vllm"), ``model`` (required),
    ``base_url``/``api_key``/``api_key_env``/``extra_body`` (openai), ``engine_kwargs``
    (vllm), ``cache_dir``, and the client's ``timeout_s``, ``max_concurrency``,
    ``max_attempts``, ``backoff_s``, ``max_backoff_s`` (with "vllm" the defaults are
    ``max_concurrency=64``, ``timeout_s=600``). A key that is unknown or that
    the chosen backend does not use raises ConfigError naming it: a typo must not
    silently fall back to a default.
    """
    if isinstance(spec, LLMClient):
        return spec
    if not isinstance(spec, Mapping):
        raise ConfigError(f"llm: expected a mapping or an LLMClient, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _KNOWN)
    if unknown:
        raise ConfigError(f"llm: unknown key {unknown[0]!r}; known keys: {sorted(_KNOWN)}")
    backend = spec.get("backend", "openai")
    if backend not in _BACKEND_KEYS:
        raise ConfigError(f"llm.backend: expected one of {sorted(_BACKEND_KEYS)}, got {backend!r}")
    for other, keys in _BACKEND_KEYS.items():
        misplaced = [k for k in keys if k in spec and other != backend]
        if misplaced:
            raise ConfigError(f"llm.{misplaced[0]}: only used with backend {other!r}")
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError("llm.model: required, the model name or path")
    # An in-process engine batches whatever is in flight, and a batch can take minutes
    # on a CPU: let more requests in at once and wait longer by default.
    defaults = {"max_concurrency": 64, "timeout_s": 600.0} if backend == "vllm" else {}
    client_kwargs = {**defaults, **{k: spec[k] for k in _CLIENT_KEYS if k in spec}}
    timeout_s = float(client_kwargs.get("timeout_s", 60.0))
    if backend == "openai":
        backend_obj: Any = OpenAIBackend(
            model,
            base_url=spec.get("base_url"),
            api_key=_api_key(spec),
            timeout_s=timeout_s,
            extra_body=spec.get("extra_body"),
        )
    else:
        backend_obj = VLLMEngineBackend(model, **dict(spec.get("engine_kwargs") or {}))
    cache_dir = spec.get("cache_dir")
    return LLMClient(
        backend_obj, cache_dir=None if cache_dir is None else str(cache_dir), **client_kwargs
    )


def _api_key(spec: Mapping[str, Any]) -> str | None:
    """The key itself, or read from the variable ``api_key_env`` names (so that configs
    saved with a run never hold a secret)."""
    env = spec.get("api_key_env")
    if env is None:
        return spec.get("api_key")
    if "api_key" in spec:
        raise ConfigError("llm.api_key_env: give api_key or api_key_env, not both")
    value = os.environ.get(str(env))
    if not value:
        raise ConfigError(f"llm.api_key_env: environment variable {env!r} is not set")
    return value
