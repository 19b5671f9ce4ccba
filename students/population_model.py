"""The batched Llama of a population: N members' stacked weights run as one computation.

:class:`StackedLlama` holds the shapes of the tiny Llama (heads, layers, the
rotary frequencies) and runs its forward pass and greedy decoding with every
weight carrying a leading member dimension ``M``: each layer is one batched
matrix product (``bmm``) over the members. The weights themselves are passed
in, a dict of stacked tensors under the ``transformers`` names, so the owner
(:class:`~teachgym.students.population.PopulationStudent`) decides which
members run (all, or a subset it selected) and what is trained.

The formulas are Llama's, written out: RMSNorm in float32, rotary
embeddings, eager attention, a SwiGLU MLP and, for a tied model, one
embedding matrix that is both the lookup table and the output projection
(so autograd sums both halves of its gradient, as it does for the lone
model). See the population module for why these are hand-written rather than
``vmap`` over the ``transformers`` model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from teachgym.students.batching import batch_tensors
from teachgym.students.decoding import GreedyDecoder
from teachgym.students.encoding import Encoded

__all__ = ["EMBED", "HEAD", "StackedLlama", "check_stackable", "stack_batches"]

#: The stacked parameter names of the input embedding and of an untied output layer.
EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"

#: One key/value pair per layer, each ``[M, R, H, K, dh]``.
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm (in float32) with one weight vector per member: x ``[M, T, d]``."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight[:, None, :] * xf.to(x.dtype)


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` per member: x ``[M, T, in]``, weight ``[M, out, in]``."""
    return torch.bmm(x, weight.transpose(1, 2))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def check_stackable(models: Sequence[LlamaForCausalLM]) -> None:
    """Raise ``ValueError`` unless ``models`` are Llamas of one shape without grouped
    key/value heads: what :class:`StackedLlama` computes."""
    first = models[0].config
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    for model in models:
        if model.config.model_type != "llama":
            raise ValueError(f"population members must be Llama models, got {model.config}")
        if getattr(model.config, "num_key_value_heads", None) not in (
            None,
            model.config.num_attention_heads,
        ):
            raise ValueError("population members must not group key/value heads")
        diff = [k for k in keys if getattr(model.config, k) != getattr(first, k)]
        if diff:
            raise ValueError(f"population members differ in {diff}: stack only equal shapes")


class StackedLlama:
    """The forward pass and greedy decoding of one Llama shape over a member dimension.

    Args:
        config: the members' (shared) ``transformers`` Llama config.
        device: where the rotary frequencies live (the weights' device).
        head: the stacked name of the output projection: :data:`HEAD` for an
            untied model, :data:`EMBED` for a tied one.
    """

    def __init__(self, config: Any, device: torch.device, head: str) -> None:
        self.heads = int(config.num_attention_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.layers = int(config.num_hidden_layers)
        self.head = head
        self.device = device
        rope = getattr(config, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        self._inv_freq = (1.0 / (theta**exponents)).to(device)

    def forward(
        self,
        params: Mapping[str, torch.Tensor],
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits ``[M, R, W, V]`` of ``ids`` ``[M, R, W]``, and the new key/value cache.

        ``positions`` ``[1 or M, R, W]``; ``mask`` additive ``[1 or M, R, 1, W, K]``
        over the ``K`` keys (the cached ones first). The formulas are Llama's
        (RMSNorm, rotary embeddings, eager attention, SwiGLU MLP, tied output).
        """
        m, r, w = ids.shape
        heads, dh = self.heads, self.head_dim
        embed = params[EMBED]
        x = embed[torch.arange(m, device=ids.device)[:, None], ids.reshape(m, -1)]
        freqs = positions.float()[..., None] * self._inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos()[:, :, None], angles.sin()[:, :, None]  # [., R, 1, W, dh]
        scale = dh**-0.5
        new_cache = []
        for layer in range(self.layers):
            pre = f"model.layers.{layer}."
            h = _rms_norm(x, params[pre + "input_layernorm.weight"], self.eps)

            def heads_of(name: str, h: torch.Tensor = h, pre: str = pre) -> torch.Tensor:
                out = _linear(h, params[pre + f"self_attn.{name}_proj.weight"])
                return out.view(m, r, w, heads, dh).transpose(2, 3)  # [M, R, H, W, dh]

            q, k, v = heads_of("q"), heads_of("k"), heads_of("v")
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            if cache is not None:
                k = torch.cat((cache[layer][0], k), dim=3)
                v = torch.cat((cache[layer][1], v), dim=3)
            new_cache.append((k, v))
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            attn = torch.matmul(probs, v).transpose(2, 3).reshape(m, r * w, heads * dh)
            x = x + _linear(attn, params[pre + "self_attn.o_proj.weight"])
            h = _rms_norm(x, params[pre + "post_attention_layernorm.weight"], self.eps)
            gate = _linear(h, params[pre + "mlp.gate_proj.weight"])
            up = _linear(h, params[pre + "mlp.up_proj.weight"])
            x = x + _linear(F.silu(gate) * up, params[pre + "mlp.down_proj.weight"])
        x = _rms_norm(x, params["model.norm.weight"], self.eps)
        logits = _linear(x, params[self.head])
        return logits.view(m, r, w, -1), new_cache

    def greedy(
        self,
        params: Mapping[str, torch.Tensor],
        encoded: list[list[int]],
        decoder: GreedyDecoder,
        tokenizer: Any,
    ) -> list[list[list[int]]]:
        """Greedy token ids ``[M, B, T]`` of one batch of prompts for every member of
        ``params``: the lone :class:`~.decoding.GreedyDecoder`'s loop (left padding, a
        KV cache, finished rows fed eos, ``decoder``'s stop ids and stop strings)."""
        m = params[EMBED].shape[0]
        dev = self.device
        b = len(encoded)
        width = max(len(ids) for ids in encoded)
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        attn = torch.zeros((b, width), dtype=torch.bool)
        for r, ids in enumerate(encoded):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attn[r, width - len(ids) :] = True
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        positions = (attn.long().cumsum(-1) - 1).clamp(min=0)
        low = torch.finfo(params[EMBED].dtype).min
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        allowed = causal[None] & attn[:, None, :]
        mask = torch.zeros(b, width, width, device=dev).masked_fill_(~allowed, low)
        logits, cache = self.forward(
            params, input_ids.expand(m, b, width), positions[None], mask[None, :, None]
        )
        stop_ids = torch.tensor(decoder.stop_ids, device=dev)
        done = torch.zeros(m, b, dtype=torch.bool, device=dev)
        generated: list[torch.Tensor] = []
        pos = positions[:, -1:]
        for _ in range(decoder.max_new_tokens):
            nxt = logits[:, :, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            generated.append(nxt)
            done |= torch.isin(nxt, stop_ids)
            if decoder.stop:
                flat = [g.reshape(-1) for g in generated]
                done |= decoder._stopped_by_string(flat, done.reshape(-1)).view(m, b)
            if bool(done.all()) or len(generated) == decoder.max_new_tokens:
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos + 1
            step_mask = torch.zeros(b, 1, attn.shape[1], device=dev).masked_fill_(
                ~attn[:, None, :], low
            )
            logits, cache = self.forward(
                params, nxt[:, :, None], pos[None], step_mask[None, :, None], cache
            )
        tokens = torch.stack(generated, dim=2).tolist()  # [M, B, T]
        return tokens


def stack_batches(
    batches: Sequence[Sequence[Encoded]],
    *,
    pad_token_id: int,
    pack_width: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each member's packed rows (exactly the lone student's) padded to one shape:
    ids, labels, positions ``[M, R, W]`` and the additive mask ``[M, R, 1, W, W]``
    (in ``dtype``, the weights'), on ``device``. Padding rows and columns carry no
    label and are masked out as keys."""
    parts = [
        batch_tensors(b, True, pad_token_id=pad_token_id, pack_width=pack_width, dtype=dtype)
        for b in batches
    ]
    rows = max(p["input_ids"].shape[0] for p in parts)
    width = max(p["input_ids"].shape[1] for p in parts)
    low = torch.finfo(dtype).min
    ids, labels, positions, masks = [], [], [], []
    for p in parts:
        dr, dw = rows - p["input_ids"].shape[0], width - p["input_ids"].shape[1]
        pad = pad_token_id
        ids.append(F.pad(p["input_ids"], (0, dw, 0, dr), value=pad))
        labels.append(F.pad(p["labels"], (0, dw, 0, dr), value=-100))
        positions.append(F.pad(p["position_ids"], (0, dw, 0, dr), value=0))
        masks.append(F.pad(p["attention_mask"], (0, dw, 0, dw, 0, 0, 0, dr), value=low))
    return (
        torch.stack(ids).to(device),
        torch.stack(labels).to(device),
        torch.stack(positions).to(device),
        torch.stack(masks).to(device),
    )
