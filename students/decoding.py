"""Batched greedy decoding with a KV cache and left padding, on the student's own model.

Written out rather than through ``generate`` so that the per-token cost is one
forward pass and nothing else: evaluation runs every step, on every validation
problem. A completion ends at a stop token (the tokenizer's eos and the
generation config's) or, when ``stop`` strings are given, before the first of
them; prompts go through the student's :class:`~teachgym.students.encoding.TextCodec`,
so they are rendered and cut exactly as in training, and every cut is counted.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from teachgym.students.encoding import TextCodec


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's eos plus the generation config's (instruct models often list two)."""
    ids = {int(tokenizer.eos_token_id)}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, (list, tuple)):
        ids.update(int(i) for i in configured)
    return sorted(ids)


def cache_argument(model: Any) -> str:
    """The forward pass's name for the KV cache: transformers 5 renamed
    ``past_key_values`` to ``cache``; both are supported."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class GreedyDecoder:
    """Greedy completions of prompts, ``batch_size`` at a time, by the model it is given.

    Args:
        codec: renders and encodes prompts (chat template, ``max_prompt_tokens``).
        stop_ids: token ids that end a completion.
        stop: strings that end a completion (cut before the first one).
        max_new_tokens: the most tokens decoded per prompt.
        batch_size: prompts per forward pass.

    ``last_tokens``: the prompt tokens plus the tokens generated (up to each
    row's stop token) of the last :meth:`predict`, for throughput reports.
    """

    def __init__(
        self,
        codec: TextCodec,
        stop_ids: Sequence[int],
        stop: Sequence[str],
        max_new_tokens: int,
        batch_size: int,
    ) -> None:
        self.codec = codec
        self.tokenizer = codec.tokenizer
        self.stop_ids = list(stop_ids)
        self.stop = tuple(stop)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.last_tokens = 0

    @torch.no_grad()
    def predict(self, model: Any, prompts: Sequence[str], truncated: Counter[str]) -> list[str]:
        """``model``'s completions of ``prompts`` in order; prompt cuts are added to
        ``truncated``. The model is put in eval mode."""
        model.eval()
        self.last_tokens = 0
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            out.extend(self.greedy(model, list(prompts[i : i + self.batch_size]), truncated))
        return out

    def _left_padded(
        self, encoded: list[list[int]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and attention mask of the prompts, padded on the left, on ``device``."""
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(encoded), width), dtype=torch.long)
        for r, ids in enumerate(encoded):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attn[r, width - len(ids) :] = 1
        return input_ids.to(device), attn.to(device)

    @torch.no_grad()
    def greedy(self, model: Any, prompts: list[str], truncated: Counter[str]) -> list[str]:
        """One batch: a forward pass over the prompts, then one per new token."""
        _, encoded = self.codec.encode_prompts(prompts, truncated, check=False)
        device = next(model.parameters()).device
        input_ids, attn = self._left_padded(encoded, device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        result = model(
            input_ids=input_ids, attention_mask=attn, position_ids=positions, use_cache=True
        )
        eos = self.tokenizer.eos_token_id
        stop_ids = torch.tensor(self.stop_ids, device=device)
        done = torch.zeros(len(encoded), dtype=torch.bool, device=device)
        cache_arg = cache_argument(model)
        generated: list[torch.Tensor] = []
        pos = positions[:, -1:]
        for _ in range(self.max_new_tokens):
            nxt = result.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            generated.append(nxt)
            done |= torch.isin(nxt, stop_ids)
            if self.stop:
                done |= self._stopped_by_string(generated, done)
            # The last token needs no forward pass of its own (``generate`` runs none either).
            if bool(done.all()) or len(generated) == self.max_new_tokens:
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos + 1
            result = model(
                input_ids=nxt[:, None],
                attention_mask=attn,
                position_ids=pos,
                use_cache=True,
                **{cache_arg: _cache_of(result)},
            )
        rows = torch.stack(generated, dim=1).tolist()
        self.last_tokens += sum(len(ids) for ids in encoded) + sum(map(self._generated, rows))
        return [self.decode(row) for row in rows]

    def _generated(self, row: list[int]) -> int:
        """Tokens a row generated: up to and including its first stop token."""
        stops = set(self.stop_ids)
        return next((i + 1 for i, t in enumerate(row) if t in stops), len(row))

    def decode(self, row: list[int]) -> str:
        """Text up to the first stop token, then up to the first stop string."""
        stops = set(self.stop_ids)
        end = next((i for i, t in enumerate(row) if t in stops), len(row))
        text = self.tokenizer.decode(row[:end], skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(cuts)] if cuts else text

    def _stopped_by_string(self, generated: list[torch.Tensor], done: torch.Tensor) -> torch.Tensor:
        """Rows, not yet done, whose text so far contains a stop string."""
        rows = torch.stack(generated, dim=1).tolist()
        hit = [
            not finished
            and any(s in self.tokenizer.decode(row, skip_special_tokens=True) for s in self.stop)
            for row, finished in zip(rows, done.tolist(), strict=True)
        ]
        return torch.tensor(hit, dtype=torch.bool, device=done.device)
