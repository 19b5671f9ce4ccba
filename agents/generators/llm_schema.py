"""The ``llm`` generator's reply schema: bounded pydantic models of a batch of generated
examples, and the bounds a task's data calls for.

The client refuses unbounded schemas, so every string here has a length bound.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

from pydantic import BaseModel, Field, create_model

#: Bounds of one generated example. The client refuses unbounded schemas: a
#: grammar-constrained model would otherwise write one string until max_tokens.
MAX_PROMPT_CHARS = 400
MAX_ANSWER_CHARS = 200
MAX_SKILL_CHARS = 100


@cache
def item_model(
    labelled: bool = False,
    prompt_chars: int = MAX_PROMPT_CHARS,
    answer_chars: int = MAX_ANSWER_CHARS,
    extra: tuple[tuple[str, int], ...] = (),
) -> type[BaseModel]:
    """One generated example: ``prompt``, ``answer``, the ``skill`` of a text plan's
    example, and the task's ``generation_fields`` (``extra``, with their bounds)."""
    fields: dict[str, Any] = {}
    if labelled:
        fields["skill"] = (str, Field(max_length=MAX_SKILL_CHARS))
    fields["prompt"] = (str, Field(max_length=prompt_chars))
    fields["answer"] = (str, Field(max_length=answer_chars))
    for name, bound in extra:
        fields[name] = (str, Field(max_length=bound))
    suffix = _bounds_suffix(prompt_chars, answer_chars, extra)
    return create_model(f"_{'Labelled' if labelled else ''}Item{suffix}", **fields)


def _bounds_suffix(prompt_chars: int, answer_chars: int, extra: tuple[tuple[str, int], ...]) -> str:
    """Empty for the default bounds (so their schemas, and cache keys, never change), else
    a stable digest of the bounds: two item shapes never share a schema title."""
    if (prompt_chars, answer_chars, extra) == (MAX_PROMPT_CHARS, MAX_ANSWER_CHARS, ()):
        return ""
    return "_" + hashlib.sha256(repr((prompt_chars, answer_chars, extra)).encode()).hexdigest()[:8]


@cache
def batch_model(
    n: int,
    labelled: bool = False,
    prompt_chars: int = MAX_PROMPT_CHARS,
    answer_chars: int = MAX_ANSWER_CHARS,
    extra: tuple[tuple[str, int], ...] = (),
) -> type[BaseModel]:
    """The reply model of a request for ``n`` examples: ``{examples: [...]}`` of at most ``n``.

    One class per argument tuple, made once, so its JSON schema (part of the
    client's cache key) is the same in every run. Empty strings are allowed by
    the schema and dropped per example (``empty_example``): one blank item must
    not fail, and so resend, a whole batch.
    """
    item = item_model(labelled, prompt_chars, answer_chars, extra)
    name = f"{'Labelled' if labelled else ''}Examples{n}"
    name += _bounds_suffix(prompt_chars, answer_chars, extra)
    return create_model(name, examples=(list[item], Field(max_length=n)))  # type: ignore[valid-type]


def reply_bounds(task: Any, prompt_chars: int | None, answer_chars: int | None) -> tuple[int, int]:
    """The reply schema's bounds: given, or twice the task's longest validation item."""
    longest_prompt = longest_answer = 0
    if prompt_chars is None or answer_chars is None:
        for problem in task.problems("val"):
            longest_prompt = max(longest_prompt, len(problem.prompt))
            longest_answer = max(longest_answer, len(problem.answer))
    if prompt_chars is None:
        prompt_chars = max(MAX_PROMPT_CHARS, 2 * longest_prompt)
    if answer_chars is None:
        answer_chars = max(MAX_ANSWER_CHARS, 2 * longest_answer)
    return prompt_chars, answer_chars
