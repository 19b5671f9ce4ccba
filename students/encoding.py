"""Text to token ids for a causal-LM student: prompts for decoding, examples for training.

One :class:`TextCodec` serves both directions so that a prompt is rendered and
cut the same way when the student trains on it and when it answers it: the
chat template (when used) around prompt and answer, and the length limits,
whose cuts are counted rather than silent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from teachgym.students.tokenizer import check_ids
from teachgym.types import Example

#: One encoded example: the token ids of prompt+completion+eos, and where the completion starts.
Encoded = tuple[list[int], int]


def labelled(item: Encoded) -> int:
    """Tokens of an example that carry loss (the first token is never predicted)."""
    ids, start = item
    return len(ids) - max(start, 1)


def resolve_chat_template(tokenizer: Any, chat_template: bool | None) -> bool:
    """Whether to use the tokenizer's chat template: ``None`` means when it has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template and not has_template:
        raise ValueError("chat_template is true but the tokenizer has no chat template")
    return has_template if chat_template is None else bool(chat_template)


class TextCodec:
    """Renders and encodes prompts and examples for one tokenizer.

    Args:
        tokenizer: the model's tokenizer (``eos_token_id`` is appended to completions).
        chat_template: wrap prompts (user turn) and completions (assistant turn)
            in the tokenizer's chat template.
        max_prompt_tokens: a longer prompt keeps its last tokens (the question
            and the assistant header); counted as ``truncated_prompts``.
        max_completion_tokens: a longer completion keeps its first tokens and
            loses its eos (the model is not taught to stop mid-answer); counted
            as ``truncated_completions``.
    """

    def __init__(
        self,
        tokenizer: Any,
        chat_template: bool,
        max_prompt_tokens: int | None,
        max_completion_tokens: int | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_prompt_tokens = max_prompt_tokens
        self.max_completion_tokens = max_completion_tokens

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids without special tokens, through the Rust tokenizer when there is one.

        A fast tokenizer's Rust backend encodes a batch much faster than the
        ``transformers`` wrapper around it, and every step encodes thousands
        of examples (``benchmarks/train_throughput.py`` measures it). Special
        tokens written in the text (a chat template's) are still recognised.
        """
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        return list(self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    def prompt_texts(self, prompts: Sequence[str]) -> list[str]:
        """Prompts as the model sees them: inside the chat template when one is used."""
        if not self.chat_template:
            return list(prompts)
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        return list(
            self.tokenizer.apply_chat_template(
                conversations, add_generation_prompt=True, tokenize=False
            )
        )

    def completion_texts(
        self, examples: Sequence[Example], prompt_texts: Sequence[str]
    ) -> list[str]:
        """The text the model must produce after its prompt, without the eos token.

        With a chat template this is the template's own rendering of the
        assistant turn (whatever it puts around the answer), minus the
        end-of-sequence token and anything after it: the eos id is appended
        separately, as it is without a template, and generation stops there.
        """
        if not self.chat_template:
            return [e.completion for e in examples]
        conversations = [
            [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.completion}]
            for e in examples
        ]
        full = self.tokenizer.apply_chat_template(conversations, tokenize=False)
        eos_text = self.tokenizer.eos_token
        out = []
        for text, prompt in zip(full, prompt_texts, strict=True):
            if not text.startswith(prompt):
                raise ValueError(
                    "the chat template renders a prompt differently once an answer follows "
                    f"it ({prompt!r} is not a prefix of {text!r}); set chat_template: false"
                )
            suffix = text[len(prompt) :]
            end = suffix.rfind(eos_text) if eos_text else -1
            out.append(suffix if end < 0 else suffix[:end])
        return out

    def encode_prompts(
        self, prompts: Sequence[str], counts: Counter[str], *, check: bool = True
    ) -> tuple[list[str], list[list[int]]]:
        """Rendered prompts and their ids, cut to ``max_prompt_tokens`` (counted)."""
        texts = self.prompt_texts(prompts)
        ids = self.encode(texts)
        if check:
            check_ids(self.tokenizer, texts, ids)
        limit = self.max_prompt_tokens
        if limit is not None:
            for i, row in enumerate(ids):
                if len(row) > limit:
                    ids[i] = row[len(row) - limit :]
                    counts["truncated_prompts"] += 1
        return texts, ids

    def encode_examples(
        self, examples: Sequence[Example], counts: Counter[str] | None = None
    ) -> list[Encoded]:
        """Token ids of prompt+completion+eos, and where the completion starts.

        Truncations are added to ``counts`` (see ``max_prompt_tokens``).
        """
        counts = Counter() if counts is None else counts
        prompt_texts, prompts = self.encode_prompts([e.prompt for e in examples], counts)
        comp_texts = self.completion_texts(examples, prompt_texts)
        comps = self.encode(comp_texts)
        check_ids(self.tokenizer, comp_texts, comps)
        eos = self.tokenizer.eos_token_id
        limit = self.max_completion_tokens
        encoded = []
        for p, c in zip(prompts, comps, strict=True):
            c = [*c, eos]
            if limit is not None and len(c) > limit:
                c = c[:limit]
                counts["truncated_completions"] += 1
            encoded.append((p + c, len(p)))
        return encoded
