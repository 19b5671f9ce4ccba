"""A population of tiny students trained at once: N Llamas in one batched computation.

Each member is the default tiny student (:func:`~teachgym.students.tiny.tiny_llama`)
with its own weights, data, AdamW state, learning-rate schedule and seed. The
members' weights are stacked along a leading population dimension
(``torch.func.stack_module_state``) and every layer runs as one batched
matrix product over the population (``bmm``), so N members cost one
forward/backward pass of N-fold width instead of N passes, each with its
own Python, dispatch and kernel-launch overhead.

**Each member equals a lone student given the same data** (the contract the
tests check against :class:`~teachgym.students.hf.HFStudent`): the same
initial weights (built by the same seeded constructor), the same data order
(:func:`~teachgym.students.training.data_order`), the same packed rows
(:func:`~teachgym.students.training.batch_tensors`), the same loss on
completion tokens, the same per-member gradient clipping, the same AdamW
update and rate (:func:`~teachgym.students.training.lr_at`), and the same
greedy decoding (left padding, a KV cache, the same stop rules). Only
floating-point rounding differs, because the batched kernels sum in another
order.

Why hand-written layers rather than ``vmap`` over ``functional_call`` of the
``transformers`` model: the tiny student *ties* its input and output
embeddings, and ``vmap`` + ``functional_call`` over a tied Llama silently
drops the output layer's half of the embedding gradient; SDPA attention under
``vmap`` also fails on CPU inside ``transformers``. Here the tie is explicit
(one stacked embedding matrix is both the lookup table and the output
projection, so autograd sums both halves, as it does for the lone model) and
attention is written out (the eager formula), which batches on CPU and GPU.

Supported options are the tiny student's training and decoding options (see
:data:`OPTIONS`); the population always packs rows (packing changes no loss,
only the padding computed), trains in full precision, and has no LoRA, no
gradient accumulation and no vLLM backend.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from teachgym.envs.tasks.base import TaskCapabilities
from teachgym.students.decoding import GreedyDecoder, stop_token_ids
from teachgym.students.encoding import Encoded, TextCodec
from teachgym.students.options import Mode, resolve_device, task_generation_defaults
from teachgym.students.tiny import tiny_llama
from teachgym.students.tokenizer import build_char_tokenizer
from teachgym.students.training import (
    CLIP_NORM,
    TrainSettings,
    batch_orders,
    batch_tensors,
    data_order,
    lr_at,
    make_optimizer,
)
from teachgym.types import Example, Problem

__all__ = [
    "OPTIONS",
    "PopulationMember",
    "PopulationStudent",
    "make_tiny_population",
    "tiny_population_for_task",
]

#: The student options a population accepts (the tiny student's; anything else is refused).
OPTIONS = frozenset(
    {
        "mode",
        "hidden_size",
        "layers",
        "heads",
        "lr",
        "epochs",
        "batch_size",
        "eval_batch_size",
        "max_new_tokens",
        "warmup_steps",
        "lr_schedule",
        "cooldown",
        "pack_width",
        "packing",
        "device",
        "stop",
        "max_prompt_tokens",
        "max_completion_tokens",
    }
)

_EMBED = "model.embed_tokens.weight"
_HEAD = "lm_head.weight"


@dataclass
class _MemberState:
    """What persists for one member between ``train`` calls (as :class:`~.training.Trainer`
    and :class:`~.hf.HFStudent` keep it for a lone student)."""

    seed: int
    calls: int = 0
    opt_steps: int = 0
    examples_done: int = 0
    seen: list[Example] = field(default_factory=list)


@dataclass
class _Job:
    """One member's share of a ``train`` call: its encoded data and batch order."""

    encoded: list[Encoded]
    orders: list[list[int]]
    done: int
    total: int | None
    loss_sum: float = 0.0
    tokens: int = 0


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


class PopulationStudent:
    """N tiny Llama students with stacked weights, trained and evaluated as one batch.

    Args:
        models: the members' initial models (tiny Llamas of one shape and
            vocabulary, e.g. :func:`~teachgym.students.tiny.tiny_llama` with
            each member's seed); their weights are copied and are the base
            that :meth:`reset` returns to.
        tokenizer: the shared tokenizer (the character tokenizer of the task).
        seeds: one seed per member: its data order, as a lone student's seed.
        mode: ``"continual"`` or ``"accumulate"``, as for
            :class:`~teachgym.students.hf.HFStudent`.
        lr, epochs, batch_size, warmup_steps, lr_schedule, cooldown,
            pack_width: the training settings (:class:`~.training.TrainSettings`).
        eval_batch_size, max_new_tokens, stop: greedy decoding, as the lone student's.
        max_prompt_tokens, max_completion_tokens: length limits (:class:`~.encoding.TextCodec`).
        packing: accepted for a lone student's configs; the population always
            packs, which gives the same loss as padding.
        device: ``"cpu"``, ``"cuda"`` or ``None``/``"auto"``.

    Members are addressed by index ``0 .. size-1``. Methods that take
    ``members`` work on that subset only; the others are untouched.
    """

    def __init__(
        self,
        models: Sequence[LlamaForCausalLM],
        tokenizer: Any,
        *,
        seeds: Sequence[int],
        mode: Mode = "continual",
        lr: float = 1e-3,
        epochs: int = 1,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        max_new_tokens: int = 8,
        warmup_steps: int = 50,
        lr_schedule: str = "inverse_sqrt",
        cooldown: float = 0.0,
        pack_width: int = 64,
        packing: bool | str = "auto",
        device: str | None = None,
        stop: Sequence[str] = (),
        max_prompt_tokens: int | None = None,
        max_completion_tokens: int | None = None,
    ) -> None:
        if not models:
            raise ValueError("a population needs at least one model")
        if len(seeds) != len(models):
            raise ValueError(f"{len(seeds)} seeds for {len(models)} models: give one per member")
        if mode not in ("continual", "accumulate"):
            raise ValueError(f"mode must be 'continual' or 'accumulate', got {mode!r}")
        if packing not in (True, False, "auto"):
            raise ValueError(f"packing must be true, false or 'auto', got {packing!r}")
        self.settings = TrainSettings(
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            warmup_steps=warmup_steps,
            lr_schedule=lr_schedule,
            cooldown=cooldown,
            pack_width=pack_width,
            grad_accum_steps=1,
            packing=True,
        )
        config = models[0].config
        self._check_shapes(models)
        self.mode: Mode = mode
        self.device = resolve_device(device)
        self.tokenizer = tokenizer
        self.codec = TextCodec(tokenizer, False, max_prompt_tokens, max_completion_tokens)
        self.decoder = GreedyDecoder(
            self.codec, stop_token_ids(models[0], tokenizer), stop, max_new_tokens, eval_batch_size
        )
        self.heads = int(config.num_attention_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.layers = int(config.num_hidden_layers)
        rope = getattr(config, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        self._inv_freq = (1.0 / (theta**exponents)).to(self.device)
        params, _ = torch.func.stack_module_state(list(models))
        # An untied model stacks its own output layer; a tied one reuses the embedding.
        self._head = _HEAD if _HEAD in params else _EMBED
        self.params = {k: v.detach().to(self.device).clone() for k, v in params.items()}
        self._base = {k: v.clone() for k, v in self.params.items()}
        defaults = make_optimizer([torch.nn.Parameter(torch.zeros(1))], lr).defaults
        self._betas: tuple[float, float] = tuple(defaults["betas"])  # type: ignore[assignment]
        self._eps_adam = float(defaults["eps"])
        self._weight_decay = float(defaults["weight_decay"])
        self.exp_avg = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.states = [_MemberState(seed=int(s)) for s in seeds]
        self.horizon: int | None = None
        self.last_predict_info: dict[str, int] = {}

    @staticmethod
    def _check_shapes(models: Sequence[LlamaForCausalLM]) -> None:
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

    # -- members ------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """The number of members."""
        return len(self.states)

    def member(self, index: int) -> PopulationMember:
        """Member ``index`` as a lone :class:`~teachgym.students.base.Student`."""
        self._indices([index])
        return PopulationMember(self, index)

    def _indices(self, members: Iterable[int] | None) -> list[int]:
        out = list(range(self.size)) if members is None else [int(m) for m in members]
        bad = [m for m in out if not 0 <= m < self.size]
        if bad or len(set(out)) != len(out):
            raise ValueError(f"members must be distinct indices in [0, {self.size}), got {out}")
        return out

    def member_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Member ``index``'s weights under the ``transformers`` names (``lm_head``
        included, equal to the embedding when tied): ``LlamaForCausalLM.load_state_dict``
        takes it."""
        state = {k: v[index].detach().clone() for k, v in self.params.items()}
        state.setdefault(_HEAD, state[_EMBED])
        return state

    # -- the Student protocol, per member -------------------------------------------------
    def set_horizon(self, examples: int | None) -> None:
        """The episode's data budget in examples, for every member's cool-down
        (see :meth:`~teachgym.students.hf.HFStudent.set_horizon`)."""
        if examples is not None and examples < 1:
            raise ValueError(f"the horizon must be >= 1 example, got {examples}")
        self.horizon = examples

    def reset(self, members: Iterable[int] | None = None) -> None:
        """``members`` (default all) back to their base weights, a fresh optimizer and
        no data seen."""
        idx = self._indices(members)
        where = torch.tensor(idx, device=self.device)
        for k, v in self.params.items():
            v.index_copy_(0, where, self._base[k].index_select(0, where))
            self.exp_avg[k].index_fill_(0, where, 0.0)
            self.exp_avg_sq[k].index_fill_(0, where, 0.0)
        for i in idx:
            self.states[i] = _MemberState(seed=self.states[i].seed)

    def train(self, data: Mapping[int, Sequence[Example]]) -> dict[int, dict[str, float]]:
        """One ``train`` call for each member in ``data`` (member -> its examples), at once.

        Every member gets exactly what ``HFStudent.train(examples)`` would do to a
        lone student in its state: its own data order, batches, rate and
        optimizer steps. Members with fewer batches than others stop early (their
        weights and optimizer are not touched by the remaining steps); members not
        in ``data`` are not called at all. Returns each called member's metrics
        (``loss``, ``steps``, ``tokens``, and truncation counts when a length
        limit is set).
        """
        members = self._indices(data)
        results: dict[int, dict[str, float]] = {}
        jobs: dict[int, _Job] = {}
        truncated: dict[int, Counter[str]] = {}
        for i in members:
            state = self.states[i]
            state.calls += 1
            if self.mode == "accumulate":
                state.seen.extend(data[i])
                self._restore_base(i)
                examples = list(state.seen)
            else:
                examples = list(data[i])
            if not examples:
                results[i] = {"loss": float("nan"), "steps": 0.0, "tokens": 0.0}
                continue
            truncated[i] = Counter()
            encoded = self.codec.encode_examples(examples, truncated[i])
            s = self.settings
            orders = list(
                batch_orders(
                    len(encoded), s.batch_size, s.epochs, data_order(state.seed, state.calls)
                )
            )
            if self.mode == "continual":
                total = self.horizon * s.epochs if self.horizon else None
                jobs[i] = _Job(encoded, orders, state.examples_done, total)
            else:
                jobs[i] = _Job(encoded, orders, 0, len(encoded) * s.epochs)
        steps = max((len(j.orders) for j in jobs.values()), default=0)
        for step in range(steps):
            active = [i for i in jobs if step < len(jobs[i].orders)]
            batches = {i: [jobs[i].encoded[k] for k in jobs[i].orders[step]] for i in active}
            rates = []
            for i in active:
                job = jobs[i]
                progress = job.done / job.total if job.total else None
                rates.append(lr_at(self.settings, self.states[i].opt_steps, progress))
            losses = self._step(active, [batches[i] for i in active], rates)
            for i, loss in zip(active, losses, strict=True):
                job = jobs[i]
                job.loss_sum += loss
                job.done += len(batches[i])
                job.tokens += sum(len(ids) for ids, _ in batches[i])
        for i, job in jobs.items():
            if self.mode == "continual":
                self.states[i].examples_done = job.done
            n = len(job.orders)
            metrics = {
                "loss": job.loss_sum / max(1, n),
                "steps": float(n),
                "tokens": float(job.tokens),
            }
            if (
                self.codec.max_prompt_tokens is not None
                or self.codec.max_completion_tokens is not None
            ):
                metrics["truncated_prompts"] = float(truncated[i]["truncated_prompts"])
                metrics["truncated_completions"] = float(truncated[i]["truncated_completions"])
            results[i] = metrics
        return {i: results[i] for i in members}

    def _restore_base(self, index: int) -> None:
        """Member ``index`` from its base weights with a fresh optimizer (accumulate mode)."""
        for k, v in self.params.items():
            v[index] = self._base[k][index]
            self.exp_avg[k][index] = 0.0
            self.exp_avg_sq[k][index] = 0.0
        self.states[index].opt_steps = 0

    @torch.no_grad()
    def predict(
        self, problems: Sequence[Problem], members: Iterable[int] | None = None
    ) -> list[list[str]]:
        """Greedy completions of ``problems`` by each of ``members`` (default all), in
        order: ``out[j][k]`` is the ``j``-th listed member's answer to problem ``k``."""
        idx = self._indices(members)
        params = self._subset(idx)
        truncated: Counter[str] = Counter()
        rows: list[list[list[int]]] = [[] for _ in idx]
        prompts = [p.prompt for p in problems]
        size = self.decoder.batch_size
        for start in range(0, len(prompts), size):
            _, encoded = self.codec.encode_prompts(
                prompts[start : start + size], truncated, check=False
            )
            for j, chunk in enumerate(self._greedy(params, encoded)):
                rows[j].extend(chunk)
        if self.codec.max_prompt_tokens is not None:
            self.last_predict_info = {"truncated_prompts": truncated["truncated_prompts"]}
        return [[self.decoder.decode(row) for row in member_rows] for member_rows in rows]

    # -- the batched model ------------------------------------------------------------------
    def _subset(self, idx: list[int]) -> dict[str, torch.Tensor]:
        if idx == list(range(self.size)):
            return self.params
        where = torch.tensor(idx, device=self.device)
        return {k: v.index_select(0, where) for k, v in self.params.items()}

    def _forward(
        self,
        params: Mapping[str, torch.Tensor],
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits ``[M, R, W, V]`` of ``ids`` ``[M, R, W]``, and the new key/value cache.

        ``positions`` ``[1 or M, R, W]``; ``mask`` additive ``[1 or M, R, 1, W, K]``
        over the ``K`` keys (the cached ones first). The formulas are Llama's
        (RMSNorm, rotary embeddings, eager attention, SwiGLU MLP, tied output).
        """
        m, r, w = ids.shape
        heads, dh = self.heads, self.head_dim
        embed = params[_EMBED]
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
        logits = _linear(x, params[self._head])
        return logits.view(m, r, w, -1), new_cache

    def _stack_batches(
        self, batches: Sequence[Sequence[Encoded]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each member's packed rows (exactly the lone student's) padded to one shape:
        ids, labels, positions ``[M, R, W]`` and the additive mask ``[M, R, 1, W, W]``.
        Padding rows and columns carry no label and are masked out as keys."""
        dtype = self.params[_EMBED].dtype
        parts = [
            batch_tensors(
                b,
                True,
                pad_token_id=self.tokenizer.pad_token_id,
                pack_width=self.settings.pack_width,
                dtype=dtype,
            )
            for b in batches
        ]
        rows = max(p["input_ids"].shape[0] for p in parts)
        width = max(p["input_ids"].shape[1] for p in parts)
        low = torch.finfo(dtype).min
        ids, labels, positions, masks = [], [], [], []
        for p in parts:
            dr, dw = rows - p["input_ids"].shape[0], width - p["input_ids"].shape[1]
            pad = self.tokenizer.pad_token_id
            ids.append(F.pad(p["input_ids"], (0, dw, 0, dr), value=pad))
            labels.append(F.pad(p["labels"], (0, dw, 0, dr), value=-100))
            positions.append(F.pad(p["position_ids"], (0, dw, 0, dr), value=0))
            masks.append(F.pad(p["attention_mask"], (0, dw, 0, dw, 0, 0, 0, dr), value=low))
        dev = self.device
        return (
            torch.stack(ids).to(dev),
            torch.stack(labels).to(dev),
            torch.stack(positions).to(dev),
            torch.stack(masks).to(dev),
        )

    def _step(
        self, members: list[int], batches: Sequence[Sequence[Encoded]], rates: Sequence[float]
    ) -> list[float]:
        """One optimizer step for each of ``members`` on its batch; returns the losses.

        The loss of each member is its mean over its labelled tokens; the summed
        loss's gradient is every member's own gradient. Then, per member, the
        gradient is clipped to :data:`~.training.CLIP_NORM` and AdamW (the
        formulas and hyper-parameters of :func:`~.training.make_optimizer`) steps
        at the member's rate.
        """
        ids, labels, positions, mask = self._stack_batches(batches)
        full = members == list(range(self.size))
        where = torch.tensor(members, device=self.device)
        live = {
            k: (v if full else v.index_select(0, where)).detach().requires_grad_(True)
            for k, v in self.params.items()
        }
        logits, _ = self._forward(live, ids, positions, mask)
        m = len(members)
        targets = labels[:, :, 1:].reshape(m, -1)
        flat = logits[:, :, :-1].reshape(-1, logits.shape[-1]).float()
        token_loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100, reduction="none")
        counts = (targets != -100).sum(1)
        losses = token_loss.view(m, -1).sum(1) / counts.clamp(min=1)
        names = list(live)
        grads = torch.autograd.grad(losses.sum(), [live[k] for k in names])
        with torch.no_grad():
            self._adamw(members, where, full, dict(zip(names, grads, strict=True)), rates)
        return [float(x) for x in losses.detach()]

    def _adamw(
        self,
        members: list[int],
        where: torch.Tensor,
        full: bool,
        grads: dict[str, torch.Tensor],
        rates: Sequence[float],
    ) -> None:
        """Per-member clipping and AdamW, in ``torch.optim.AdamW``'s formulas."""
        m = len(members)
        norms = torch.stack([g.reshape(m, -1).norm(dim=1) for g in grads.values()]).norm(dim=0)
        coef = (CLIP_NORM / (norms + 1e-6)).clamp(max=1.0)
        beta1, beta2 = self._betas
        step_size, bc2_sqrt = [], []
        for i, rate in zip(members, rates, strict=True):
            state = self.states[i]
            state.opt_steps += 1
            t = state.opt_steps
            step_size.append(rate / (1 - beta1**t))
            bc2_sqrt.append(math.sqrt(1 - beta2**t))
        dev = self.device
        size_t = torch.tensor(step_size, dtype=torch.float32, device=dev)
        bc2_t = torch.tensor(bc2_sqrt, dtype=torch.float32, device=dev)
        decay = 1 - torch.tensor(rates, dtype=torch.float32, device=dev) * self._weight_decay
        for k, g in grads.items():
            shape = (m,) + (1,) * (g.dim() - 1)
            g = g * coef.view(shape)
            if full:
                w, avg, avg_sq = self.params[k], self.exp_avg[k], self.exp_avg_sq[k]
            else:
                w = self.params[k].index_select(0, where)
                avg = self.exp_avg[k].index_select(0, where)
                avg_sq = self.exp_avg_sq[k].index_select(0, where)
            if self._weight_decay:
                w.mul_(decay.view(shape))
            avg.lerp_(g, 1 - beta1)
            avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (avg_sq.sqrt() / bc2_t.view(shape)).add_(self._eps_adam)
            w.sub_(avg / denom * size_t.view(shape))
            if not full:
                self.params[k].index_copy_(0, where, w)
                self.exp_avg[k].index_copy_(0, where, avg)
                self.exp_avg_sq[k].index_copy_(0, where, avg_sq)

    def _greedy(
        self, params: Mapping[str, torch.Tensor], encoded: list[list[int]]
    ) -> list[list[list[int]]]:
        """Greedy token ids of one batch of prompts for every member of ``params``:
        the lone :class:`~.decoding.GreedyDecoder`'s loop (left padding, a KV cache,
        finished rows fed eos, stop ids and stop strings)."""
        m = params[_EMBED].shape[0]
        dev = self.device
        b = len(encoded)
        width = max(len(ids) for ids in encoded)
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        attn = torch.zeros((b, width), dtype=torch.bool)
        for r, ids in enumerate(encoded):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attn[r, width - len(ids) :] = True
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        positions = (attn.long().cumsum(-1) - 1).clamp(min=0)
        low = torch.finfo(self.params[_EMBED].dtype).min
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        allowed = causal[None] & attn[:, None, :]
        mask = torch.zeros(b, width, width, device=dev).masked_fill_(~allowed, low)
        logits, cache = self._forward(
            params, input_ids.expand(m, b, width), positions[None], mask[None, :, None]
        )
        stop_ids = torch.tensor(self.decoder.stop_ids, device=dev)
        done = torch.zeros(m, b, dtype=torch.bool, device=dev)
        generated: list[torch.Tensor] = []
        pos = positions[:, -1:]
        for _ in range(self.decoder.max_new_tokens):
            nxt = logits[:, :, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            generated.append(nxt)
            done |= torch.isin(nxt, stop_ids)
            if self.decoder.stop:
                flat = [g.reshape(-1) for g in generated]
                done |= self.decoder._stopped_by_string(flat, done.reshape(-1)).view(m, b)
            if bool(done.all()) or len(generated) == self.decoder.max_new_tokens:
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos + 1
            step_mask = torch.zeros(b, 1, attn.shape[1], device=dev).masked_fill_(
                ~attn[:, None, :], low
            )
            logits, cache = self._forward(
                params, nxt[:, :, None], pos[None], step_mask[None, :, None], cache
            )
        tokens = torch.stack(generated, dim=2).tolist()  # [M, B, T]
        return tokens

    # -- checkpoints -------------------------------------------------------------------------
    def save_member(self, index: int, path: str | Path) -> None:
        """Member ``index``'s weights, AdamW moments and counters, in ``path`` (a directory)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            "params": {k: v[index].clone() for k, v in self.params.items()},
            "exp_avg": {k: v[index].clone() for k, v in self.exp_avg.items()},
            "exp_avg_sq": {k: v[index].clone() for k, v in self.exp_avg_sq.items()},
        }
        torch.save(tensors, path / "member.pt")
        state = self.states[index]
        meta = {
            "seed": state.seed,
            "calls": state.calls,
            "opt_steps": state.opt_steps,
            "examples_done": state.examples_done,
            "mode": self.mode,
            "seen": [e.model_dump() for e in state.seen],
        }
        (path / "member.json").write_text(json.dumps(meta))

    def load_member(self, index: int, path: str | Path) -> None:
        """Member ``index`` resumes from :meth:`save_member`'s directory."""
        path = Path(path)
        meta = json.loads((path / "member.json").read_text())
        if meta["mode"] != self.mode:
            raise ValueError(
                f"{path} holds a {meta['mode']} member; this population is {self.mode}"
            )
        tensors = torch.load(path / "member.pt", map_location=self.device, weights_only=True)
        for name, target in (
            ("params", self.params),
            ("exp_avg", self.exp_avg),
            ("exp_avg_sq", self.exp_avg_sq),
        ):
            for k, v in target.items():
                v[index] = tensors[name][k]
        self.states[index] = _MemberState(
            seed=int(meta["seed"]),
            calls=int(meta["calls"]),
            opt_steps=int(meta["opt_steps"]),
            examples_done=int(meta["examples_done"]),
            seen=[Example.model_validate(e) for e in meta["seen"]],
        )


class PopulationMember:
    """One member of a :class:`PopulationStudent` as a lone
    :class:`~teachgym.students.base.Student` (a batch of one): what a sub-env of the
    vector env holds, so it keeps the single-env contract."""

    def __init__(self, population: PopulationStudent, index: int) -> None:
        self.population = population
        self.index = index

    def train(self, examples: Sequence[Example]) -> dict[str, float]:
        return self.population.train({self.index: examples})[self.index]

    def predict(self, problems: Sequence[Problem]) -> list[str]:
        return self.population.predict(problems, [self.index])[0]

    def reset(self) -> None:
        self.population.reset([self.index])

    def set_horizon(self, examples: int | None) -> None:
        """The horizon is the population's (one config): setting it sets every member's."""
        self.population.set_horizon(examples)

    def save(self, path: str | Path) -> None:
        self.population.save_member(self.index, path)

    def load(self, path: str | Path) -> None:
        self.population.load_member(self.index, path)


def make_tiny_population(
    alphabet: Iterable[str],
    seeds: Sequence[int],
    *,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 8,
    lr: float = 4e-3,
    batch_size: int = 128,
    warmup_steps: int = 300,
    cooldown: float = 0.3,
    **kwargs: Any,
) -> PopulationStudent:
    """One member per seed, each the tiny student that
    :func:`~teachgym.students.tiny.make_tiny_student` builds with that seed (same
    defaults, same initial weights)."""
    unknown = sorted(set(kwargs) - OPTIONS)
    if unknown:
        raise ValueError(
            f"options the population does not support: {unknown}; known: {sorted(OPTIONS)}"
        )
    if not seeds:
        raise ValueError("a population needs at least one seed (one member per seed)")
    tokenizer = build_char_tokenizer(list(alphabet))
    models = [
        tiny_llama(len(tokenizer), hidden_size=hidden_size, layers=layers, heads=heads, seed=int(s))
        for s in seeds
    ]
    return PopulationStudent(
        models,
        tokenizer,
        seeds=seeds,
        lr=lr,
        batch_size=batch_size,
        warmup_steps=warmup_steps,
        cooldown=cooldown,
        **kwargs,
    )


def tiny_population_for_task(task: Any, seeds: Sequence[int], **kwargs: Any) -> PopulationStudent:
    """The population of ``student: tiny`` for ``task``: the tiny student's vocabulary and
    decoding limits (:func:`~teachgym.students.tiny.tiny_student_for_task`), one member per seed."""
    alphabet = TaskCapabilities.of(task).require("alphabet", "the tiny population")
    return make_tiny_population(alphabet, seeds, **task_generation_defaults(task, kwargs))
