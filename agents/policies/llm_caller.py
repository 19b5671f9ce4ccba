"""The line every LLM teacher has to its LLM: :class:`LLMCaller` (template, seeded
sampling, the request, the counts), the options all LLM teachers take and the mixin that
sets a teacher up with them.

The teachers themselves, and what they ask and make of a reply, are in
:mod:`teachgym.agents.policies.llm`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from teachgym.agents.llm import LLMClient, LLMRequest, Sampling, make_client
from teachgym.agents.policies.templates import PromptTemplate, load_template
from teachgym.options import Options

#: The system message of every teacher request; the task itself is in the template.
SYSTEM_PROMPT = (
    "You are the teacher in a machine-teaching loop: a small student model learns only from "
    "the training data your decisions produce, and is then tested. Reply with a single JSON "
    "object that follows the requested format, and nothing else."
)

_LLM_SUMS = ("requests", "cached", "ok", "prompt_tokens", "completion_tokens")


class LLMCaller:
    """One teacher's line to the LLM: template, seeded sampling, the call, the counts.

    Counts, as ``last_stats`` (the latest act) and ``stats`` (totals):

    - ``llm``: the client's ``take_stats()`` (requests, cached, ok, failed and
      retried by reason, tokens). The teacher takes them right after its own
      request, so share a client object with another component (a generator)
      only if you do not need the two separated.
    - ``fallback`` (last act: a reason or None) / ``fallbacks`` (totals by
      reason): the act used the default action. ``llm_<reason>`` is a failed
      request (``llm_timeout``, ``llm_schema``, ...); other reasons are
      replies that could not be used (``empty_plan``, ``no_valid_weights``, ...).
    - ``ignored``: reply items dropped from an otherwise usable reply
      (``unknown_skill``, ``bad_weight``, ``bad_name``, ...).

    Sampling is seeded per request from the teacher's seed and the number of
    requests so far, which is saved, so a resumed run sends the same requests
    and, with the client's cache, gets the same replies and actions.
    """

    def __init__(
        self,
        llm: LLMClient | Mapping[str, Any],
        template: PromptTemplate,
        reply_model: type[BaseModel],
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> None:
        self.client = make_client(llm)
        self.template = template
        self.reply_model = reply_model
        self.seed = seed
        self.temperature = temperature  # checked by the teacher's options
        self.max_tokens = max_tokens
        self.calls = 0
        self.totals: dict[str, Any] = {k: 0 for k in _LLM_SUMS} | {"failed": {}, "retried": {}}
        self.fallbacks: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.acts = 0
        self.last_stats: dict[str, Any] = {}
        self.last_prompt: str | None = None

    def sampling(self) -> Sampling:
        seed = int(np.random.SeedSequence([self.seed, self.calls]).generate_state(1)[0] >> 1)
        return Sampling(temperature=self.temperature, max_tokens=self.max_tokens, seed=seed)

    def ask(self, values: Mapping[str, Any]) -> Any:
        """The parsed reply, or None when the request failed (counted as a fallback)."""
        self.acts += 1
        self.last_prompt = self.template.render(values)
        request = LLMRequest(
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": self.last_prompt},
            ],
            response_model=self.reply_model,
            sampling=self.sampling(),
        )
        self.calls += 1
        (reply,) = self.client.complete([request])
        llm = self.client.take_stats()
        self._add(llm)
        self.last_stats = {"llm": llm, "fallback": None, "ignored": {}}
        if not reply.ok or reply.parsed is None:
            self.fall_back(f"llm_{reply.error or 'no_reply'}")
            return None
        return reply.parsed

    def fall_back(self, reason: str) -> None:
        self.fallbacks[reason] += 1
        self.last_stats["fallback"] = reason

    def ignore(self, counts: Mapping[str, int]) -> None:
        for reason, n in counts.items():
            if n:
                self.ignored[reason] += n
                self.last_stats["ignored"][reason] = self.last_stats["ignored"].get(reason, 0) + n

    def _add(self, llm: Mapping[str, Any]) -> None:
        for key in _LLM_SUMS:
            self.totals[key] += int(llm.get(key, 0))
        for key in ("failed", "retried"):
            merged = Counter(self.totals[key])
            merged.update(llm.get(key, {}))
            self.totals[key] = dict(sorted(merged.items()))

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "acts": self.acts,
            "fallbacks": dict(sorted(self.fallbacks.items())),
            "ignored": dict(sorted(self.ignored.items())),
            "llm": dict(self.totals),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, **self.stats}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
        self.acts = int(state.get("acts", 0))
        self.fallbacks = Counter(state.get("fallbacks", {}))
        self.ignored = Counter(state.get("ignored", {}))
        self.totals = {k: 0 for k in _LLM_SUMS} | {"failed": {}, "retried": {}}
        self.totals.update(state.get("llm", {}))


class LLMTeacherOptions(Options):
    """Options every ``llm`` teacher takes (the OpenEnded one takes these only)."""

    llm: Any = Field(
        default=None,
        description="the client spec {backend, model, base_url, ...} or an LLMClient; "
        "null: the config's top-level llm",
    )
    prompt_file: str | Path | None = Field(
        default=None, description="a prompt template of your own; null: the packaged one"
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="sampling temperature")
    max_tokens: int = Field(default=1024, ge=1, description="reply tokens at most")
    max_errors_shown: int = Field(default=12, ge=0, description="error lines in the prompt")


class LLMTeacherMixin:
    """What every LLM teacher adds to its base: the caller, its options and its counts."""

    template_name: str
    variables: tuple[str, ...]
    reply_model: type[BaseModel]
    caller: LLMCaller

    def _setup_llm(
        self,
        seed: int,
        llm: LLMClient | Mapping[str, Any] | None,
        prompt_file: str | Path | None,
        temperature: float,
        max_tokens: int,
        max_errors_shown: int,
    ) -> None:
        if llm is None:
            raise ValueError(
                f"{type(self).__name__} needs teacher_kwargs.llm: a client spec such as "
                "{backend: openai, model: ..., base_url: ...} or an LLMClient"
            )
        self.max_errors_shown = max_errors_shown
        template = load_template(self.template_name, prompt_file, self.variables)
        self.caller = LLMCaller(
            llm,
            template,
            self.reply_model,
            seed=seed,
            temperature=temperature,
            max_tokens=max_tokens,
        )

    @property
    def last_stats(self) -> dict[str, Any]:
        """Counts of the latest ``act``: ``{"llm", "fallback", "ignored"}`` (see LLMCaller)."""
        return self.caller.last_stats

    @property
    def stats(self) -> dict[str, Any]:
        """Totals since the teacher was built (kept across resume)."""
        return self.caller.stats

    @property
    def last_prompt(self) -> str | None:
        return self.caller.last_prompt
