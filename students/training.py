"""Supervised fine-tuning of a causal LM: the learning dynamics, usable without a student.

The loss is on completion tokens only: the prompt is given, so learning to
predict it would spend capacity on copying the question. Short examples are
*packed*: several sequences share one row of a batch, each attending only to
itself through a block-diagonal 4D mask, with positions that restart per
sequence. The optimizer sees exactly the examples and the loss it would see
with one padded row per example, but no compute is spent on padding, which is
most of the waste when examples are a dozen tokens of varying length.

What decides the learning dynamics is a pure function of its inputs, so that
another student (several models trained side by side, say) can reuse it and
get the same updates: the data order (:func:`data_order`, :func:`batch_orders`),
the rows (:func:`~.batching.batch_tensors`), the micro-batch weights
(:func:`~.batching.micro_batches`; both in :mod:`~teachgym.students.batching`,
re-exported here), the optimizer (:func:`make_optimizer`) and the
rate (:func:`lr_at` of a :class:`TrainSettings`). :class:`Trainer` runs them
on one model and keeps what persists between calls: the optimizer, its step
count and the examples trained on (for the cool-down).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from teachgym.students.batching import (
    accumulation_chunks,
    batch_cost,
    batch_tensors,
    micro_batches,
)
from teachgym.students.encoding import Encoded
from teachgym.students.options import Precision

# Re-exported: the batch rows live in ``batching``; callers import them from here too.
__all__ = [
    "CLIP_NORM",
    "Packing",
    "TrainSettings",
    "Trainer",
    "accumulation_chunks",
    "batch_cost",
    "batch_orders",
    "batch_tensors",
    "data_order",
    "enable_gradient_checkpointing",
    "lr_at",
    "make_optimizer",
    "micro_batches",
]

Packing = bool | Literal["auto"]
#: Gradients are clipped to this global norm before every optimizer step.
CLIP_NORM = 1.0


@dataclass(frozen=True)
class TrainSettings:
    """The hyper-parameters of one ``train`` call, validated (with their defaults) by
    :class:`~teachgym.students.options.HFStudentOptions`.

    ``batch_size`` is the number of examples per optimizer step, whatever
    ``grad_accum_steps`` is; ``warmup_steps`` is at least 1 (a smaller value
    is raised to it). See :func:`lr_at` for the schedule and ``cooldown``.
    ``packing``: pack examples into rows of ``pack_width`` tokens;
    ``"auto"`` lets the :class:`Trainer` check once, on the first batch, that
    the model honours a block-diagonal 4D attention mask (packed and padded
    losses agree) and fall back to padding with a warning if it does not.
    ``max_batch_tokens``: the most tokens one forward pass may hold (rows
    times width, see :func:`~.batching.batch_cost`); a batch that needs more runs as
    several micro-batches with the same update (see :func:`~.batching.micro_batches`), so
    long examples fit in memory without changing ``batch_size``, which stays
    the optimizer's batch and the knob of the learning dynamics. ``None``: no
    limit. ``compile``: run the training forward pass through
    ``torch.compile`` (fewer, larger kernels; the first batches pay for the
    compilation).
    """

    lr: float
    epochs: int
    batch_size: int
    warmup_steps: int
    lr_schedule: str
    cooldown: float
    pack_width: int
    grad_accum_steps: int
    packing: Packing
    max_batch_tokens: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "warmup_steps", max(1, self.warmup_steps))
        object.__setattr__(self, "cooldown", float(self.cooldown))


def lr_at(settings: TrainSettings, step: int, progress: float | None = None) -> float:
    """The rate for optimizer step ``step`` at ``progress`` (0..1) through the horizon.

    Linear warm-up, then inverse-square-root decay (or constant): the decay
    needs no horizon yet damps the oscillation a constant high rate causes. On
    top, a linear cool-down to zero over the last ``cooldown`` of the horizon,
    when one is known. Both depend only on saved counters, so a resumed run
    follows the same schedule.
    """
    warm, lr = settings.warmup_steps, settings.lr
    if settings.lr_schedule == "constant":
        rate = lr * min(1.0, (step + 1) / warm)
    else:
        rate = lr * min((step + 1) / warm, (warm / max(step + 1, warm)) ** 0.5)
    if progress is not None and settings.cooldown > 0:
        rate *= min(1.0, max(0.0, (1.0 - progress) / settings.cooldown))
    return rate


def data_order(seed: int, call: int) -> torch.Generator:
    """The generator of the data order of the ``call``-th ``train`` call (1-based) for ``seed``.

    Private to the call, so nothing else that draws random numbers shifts the
    order, and a resumed run (which restores ``call``) continues it.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + call)


def batch_orders(
    n: int, batch_size: int, epochs: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """Indices of each optimizer batch: a fresh permutation of ``range(n)`` per epoch."""
    n_batches = math.ceil(n / batch_size)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for b in range(n_batches):
            yield order[b * batch_size : (b + 1) * batch_size]


def make_optimizer(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW as every student here uses it (the rate is set per step by :func:`lr_at`)."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass (non-reentrant).

    Non-reentrant checkpointing needs no input that requires grad, so it works
    with frozen embeddings under LoRA. (``activation_checkpointing_enable`` is
    transformers 5's name for it.)
    """
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class Trainer:
    """Runs SFT on one model and keeps the state that persists across ``fit`` calls.

    Args:
        model: the causal LM (its trainable parameters are those with
            ``requires_grad``, so a LoRA model trains its adapter only).
        settings: the hyper-parameters.
        device: where the model lives (batches are moved there).
        pad_token_id: the id that fills padding.
        precision: the forward and backward passes run in its context
            (autocast when mixed); fp16 mixed precision scales the loss with
            a ``GradScaler`` (``scaler``), whose state a checkpoint keeps.

    State: ``packing`` (``settings.packing`` until ``"auto"`` is resolved),
    ``opt`` (AdamW, kept across calls of a continual ``fit``), ``opt_steps``
    (optimizer steps since the optimizer was made, which the schedule reads)
    and ``examples_done`` (examples a continual student has trained on since
    its reset, which the cool-down reads).
    """

    def __init__(
        self,
        model: Any,
        settings: TrainSettings,
        *,
        device: torch.device,
        pad_token_id: int,
        precision: Precision | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.device = device
        self.pad_token_id = pad_token_id
        self.precision = precision or Precision()
        self.scaler = torch.amp.GradScaler(device.type) if self.precision.scales_loss else None
        # The compiled module shares the model's parameters; only training runs through it.
        self.forward: Any = torch.compile(model, dynamic=True) if settings.compile else model
        self.packing: Packing = settings.packing
        self.opt: torch.optim.Optimizer | None = None
        self.params: list[torch.nn.Parameter] = []
        self.opt_steps = 0
        self.examples_done = 0

    def reset(self) -> None:
        """No optimizer, no steps, no examples: the state of a fresh student."""
        self.opt = None
        self.opt_steps = 0
        self.examples_done = 0

    def restore(self, opt_steps: int, examples_done: int, opt_state: Any | None) -> None:
        """The counters of a checkpoint, and its optimizer state when it has one."""
        self.opt = None
        self.opt_steps = opt_steps
        self.examples_done = examples_done
        if opt_state is not None:
            self.optimizer(fresh=True).load_state_dict(opt_state)
            self.opt_steps = opt_steps  # making the optimizer zeroed it

    def optimizer(self, *, fresh: bool) -> torch.optim.Optimizer:
        """The optimizer, made anew when ``fresh`` or when there is none (steps restart at 0).

        A continual student keeps AdamW across calls: restarting it every call
        (every few dozen steps) throws away its second-moment estimates and
        stalls small models on a plateau. A student that retrains from its base
        weights restarts the optimizer with them.
        """
        if self.opt is None or fresh:
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.opt = make_optimizer(self.params, self.settings.lr)
            self.opt_steps = 0
        return self.opt

    def lr_at(self, step: int, progress: float | None = None) -> float:
        """:func:`lr_at` for these settings."""
        return lr_at(self.settings, step, progress)

    def batch_tensors(
        self, batch: Sequence[Encoded], packed: bool, *, autocast: bool = True
    ) -> dict[str, torch.Tensor]:
        """:func:`~.batching.batch_tensors` for this model (its pad id, pack width and dtype).

        A packed row's mask is in the dtype the attention computes in: the
        compute dtype under autocast, else the model's.
        """
        if autocast and self.precision.autocast:
            dtype = self.precision.compute
        else:
            dtype = next(self.model.parameters()).dtype
        return batch_tensors(
            batch,
            packed,
            pad_token_id=self.pad_token_id,
            pack_width=self.settings.pack_width,
            dtype=dtype,
        )

    def loss(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's mean loss over the labelled tokens of ``tensors`` (in the training
        precision, through the compiled forward pass when ``compile`` is on)."""
        with self.precision.context(self.device):
            return self.forward(**{k: v.to(self.device) for k, v in tensors.items()}).loss

    @torch.no_grad()
    def packing_works(self, sample: Sequence[Encoded]) -> bool:
        """Does this model honour a 4D mask? Packed and padded losses must agree.

        Checked on the model as stored, without autocast (float32 master weights
        give the float32 tolerance); half-precision weights get a tolerance
        of their own resolution, still far below what attending across
        examples changes.
        """
        was_training = self.model.training
        self.model.eval()

        def loss(packed: bool) -> float:
            tensors = self.batch_tensors(sample, packed=packed, autocast=False)
            return float(self.model(**{k: v.to(self.device) for k, v in tensors.items()}).loss)

        try:
            padded, packed = loss(False), loss(True)
        except Exception as err:  # a model that rejects 4D masks outright
            warnings.warn(f"packing disabled: the model rejected a 4D mask ({err})", stacklevel=3)
            return False
        finally:
            self.model.train(was_training)
        half = next(self.model.parameters()).dtype != torch.float32
        ok = math.isclose(padded, packed, rel_tol=2e-2 if half else 1e-3, abs_tol=1e-5)
        if not ok:
            warnings.warn(
                f"packing disabled: the model ignores 4D attention masks "
                f"(packed loss {packed:.5f} vs padded {padded:.5f})",
                stacklevel=3,
            )
        return ok

    def backward(self, batch: Sequence[Encoded]) -> float:
        """Gradients of one optimizer batch's loss; returns the loss.

        With ``grad_accum_steps`` > 1, or a batch over ``max_batch_tokens``, the
        batch runs as micro-batches (see :func:`~.batching.micro_batches`): the same
        update, less memory. With a ``GradScaler`` the gradients are scaled
        (:meth:`_step` unscales them before clipping).
        """
        settings = self.settings
        packed = bool(self.packing)
        k = min(settings.grad_accum_steps, len(batch))
        if k == 1 and settings.max_batch_tokens is None:
            chunks: list[tuple[Sequence[Encoded], float]] = [(batch, 1.0)]
        else:
            chunks = micro_batches(
                batch,
                k,
                settings.max_batch_tokens,
                packed=packed,
                pack_width=settings.pack_width,
            )
        if len(chunks) == 1:
            loss = self.loss(self.batch_tensors(batch, packed=packed))
            self._backward(loss)
            return float(loss.detach())
        value = 0.0
        for chunk, share in chunks:
            loss = self.loss(self.batch_tensors(chunk, packed=packed)) * share
            self._backward(loss)
            value += float(loss.detach())
        return value

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def fit(
        self,
        encoded: Sequence[Encoded],
        generator: torch.Generator,
        *,
        continual: bool,
        horizon: int | None = None,
    ) -> dict[str, float]:
        """``epochs`` passes over ``encoded`` in the order ``generator`` draws.

        ``continual``: keep the optimizer and count the examples towards
        ``horizon`` (the examples of new data expected over the episode, for the
        cool-down; ``None``: no cool-down). Otherwise this call is a complete
        run: a fresh optimizer, and the horizon is this call's own examples.
        Returns the mean ``loss``, the optimizer ``steps`` and the ``tokens`` seen.
        """
        settings = self.settings
        if self.packing == "auto":
            self.packing = self.packing_works(encoded[: min(8, len(encoded))])
        opt = self.optimizer(fresh=not continual)
        if continual:
            done = self.examples_done
            total = horizon * settings.epochs if horizon else None
        else:
            done, total = 0, len(encoded) * settings.epochs
        self.model.train()
        loss_sum, tokens, steps = 0.0, 0, 0
        orders = batch_orders(len(encoded), settings.batch_size, settings.epochs, generator)
        for indices in orders:
            batch = [encoded[i] for i in indices]
            loss_sum += self._step(opt, batch, done / total if total else None)
            done += len(batch)
            tokens += sum(len(ids) for ids, _ in batch)
            steps += 1
        if continual:
            self.examples_done = done
        self.model.eval()
        return {"loss": loss_sum / max(1, steps), "steps": float(steps), "tokens": float(tokens)}

    def _step(
        self, opt: torch.optim.Optimizer, batch: Sequence[Encoded], progress: float | None
    ) -> float:
        """One optimizer step on ``batch``: gradients, clipping, the scheduled rate."""
        opt.zero_grad(set_to_none=True)
        loss = self.backward(batch)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(self.params, CLIP_NORM)
        rate = self.lr_at(self.opt_steps, progress)
        for group in opt.param_groups:
            group["lr"] = rate
        if self.scaler is not None:
            self.scaler.step(opt)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        else:
            opt.step()
        self.opt_steps += 1
        return loss
