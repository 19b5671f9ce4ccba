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

The parts: :mod:`~teachgym.students.population_model` (the batched Llama:
forward pass, greedy decoding, stacked batch rows) and
:mod:`~teachgym.students.population_optim` (per-member clipping and AdamW);
this module owns the members' state, the ``train``/``predict`` calls and
checkpoints.

Supported options are the tiny student's training and decoding options (see
:data:`OPTIONS`); the population always packs rows (packing changes no loss,
only the padding computed), trains in full precision, and has no LoRA, no
gradient accumulation and no vLLM backend.
"""

from __future__ import annotations

import json
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
from teachgym.students.population_model import (
    EMBED,
    HEAD,
    StackedLlama,
    check_stackable,
    stack_batches,
)
from teachgym.students.population_optim import StackedAdamW
from teachgym.students.tiny import tiny_llama
from teachgym.students.tokenizer import build_char_tokenizer
from teachgym.students.training import TrainSettings, batch_orders, data_order, lr_at
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
    #: The prompts and completions that the length limits cut while encoding.
    truncated: Counter[str]
    loss_sum: float = 0.0
    tokens: int = 0


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
        self._check_arguments(models, seeds, mode, packing)
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
        check_stackable(models)
        self.mode: Mode = mode
        self.device = resolve_device(device)
        self.tokenizer = tokenizer
        self.codec = TextCodec(tokenizer, False, max_prompt_tokens, max_completion_tokens)
        self.decoder = GreedyDecoder(
            self.codec, stop_token_ids(models[0], tokenizer), stop, max_new_tokens, eval_batch_size
        )
        params, _ = torch.func.stack_module_state(list(models))
        # An untied model stacks its own output layer; a tied one reuses the embedding.
        head = HEAD if HEAD in params else EMBED
        self.model = StackedLlama(models[0].config, self.device, head)
        self.params = {k: v.detach().to(self.device).clone() for k, v in params.items()}
        self._base = {k: v.clone() for k, v in self.params.items()}
        self.optim = StackedAdamW(self.params, lr, self.device)
        self.states = [_MemberState(seed=int(s)) for s in seeds]
        self.horizon: int | None = None
        self.last_predict_info: dict[str, int] = {}

    @staticmethod
    def _check_arguments(
        models: Sequence[LlamaForCausalLM], seeds: Sequence[int], mode: str, packing: bool | str
    ) -> None:
        """Refuse what no population can be built from: no models, a seed count that is not
        one per model, an unknown mode or packing."""
        if not models:
            raise ValueError("a population needs at least one model")
        if len(seeds) != len(models):
            raise ValueError(f"{len(seeds)} seeds for {len(models)} models: give one per member")
        if mode not in ("continual", "accumulate"):
            raise ValueError(f"mode must be 'continual' or 'accumulate', got {mode!r}")
        if packing not in (True, False, "auto"):
            raise ValueError(f"packing must be true, false or 'auto', got {packing!r}")

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
        state.setdefault(HEAD, state[EMBED])
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
        self.optim.clear(where)
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
        for i in members:
            job = self._job(i, data[i])
            if job is None:
                results[i] = {"loss": float("nan"), "steps": 0.0, "tokens": 0.0}
            else:
                jobs[i] = job
        self._run(jobs)
        for i, job in jobs.items():
            if self.mode == "continual":
                self.states[i].examples_done = job.done
            results[i] = self._metrics(job)
        return {i: results[i] for i in members}

    def _job(self, index: int, examples: Sequence[Example]) -> _Job | None:
        """Member ``index``'s share of a ``train`` call, as the lone student starts one:
        the call counted, the data of its mode encoded (in accumulate mode, all data so
        far, from the base weights), its batch order and schedule horizon. ``None``
        when there is nothing to train on."""
        state = self.states[index]
        state.calls += 1
        if self.mode == "accumulate":
            state.seen.extend(examples)
            self._restore_base(index)
            examples = list(state.seen)
        else:
            examples = list(examples)
        if not examples:
            return None
        truncated: Counter[str] = Counter()
        encoded = self.codec.encode_examples(examples, truncated)
        s = self.settings
        orders = list(
            batch_orders(len(encoded), s.batch_size, s.epochs, data_order(state.seed, state.calls))
        )
        if self.mode == "continual":
            total = self.horizon * s.epochs if self.horizon else None
            return _Job(encoded, orders, state.examples_done, total, truncated)
        return _Job(encoded, orders, 0, len(encoded) * s.epochs, truncated)

    def _run(self, jobs: Mapping[int, _Job]) -> None:
        """The optimizer steps of ``jobs``, one batched step per step index: a member takes
        part while it has batches left, at its own scheduled rate."""
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

    def _metrics(self, job: _Job) -> dict[str, float]:
        """A finished job's metrics, as the lone student's ``train`` returns them."""
        n = len(job.orders)
        metrics = {
            "loss": job.loss_sum / max(1, n),
            "steps": float(n),
            "tokens": float(job.tokens),
        }
        if self.codec.max_prompt_tokens is not None or self.codec.max_completion_tokens is not None:
            metrics["truncated_prompts"] = float(job.truncated["truncated_prompts"])
            metrics["truncated_completions"] = float(job.truncated["truncated_completions"])
        return metrics

    def _restore_base(self, index: int) -> None:
        """Member ``index`` from its base weights with a fresh optimizer (accumulate mode)."""
        for k, v in self.params.items():
            v[index] = self._base[k][index]
        self.optim.clear_member(index)
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
            tokens = self.model.greedy(params, encoded, self.decoder, self.tokenizer)
            for j, chunk in enumerate(tokens):
                rows[j].extend(chunk)
        if self.codec.max_prompt_tokens is not None:
            self.last_predict_info = {"truncated_prompts": truncated["truncated_prompts"]}
        return [[self.decoder.decode(row) for row in member_rows] for member_rows in rows]

    # -- the batched model's weights, loss and update -----------------------------------------
    def _subset(self, idx: list[int]) -> dict[str, torch.Tensor]:
        if idx == list(range(self.size)):
            return self.params
        where = torch.tensor(idx, device=self.device)
        return {k: v.index_select(0, where) for k, v in self.params.items()}

    def _step(
        self, members: list[int], batches: Sequence[Sequence[Encoded]], rates: Sequence[float]
    ) -> list[float]:
        """One optimizer step for each of ``members`` on its batch; returns the losses.

        The loss of each member is its mean over its labelled tokens; the summed
        loss's gradient is every member's own gradient. Then, per member, the
        gradient is clipped to :data:`~.training.CLIP_NORM` and AdamW (the
        formulas and hyper-parameters of :func:`~.training.make_optimizer`) steps
        at the member's rate (:class:`~.population_optim.StackedAdamW`).
        """
        ids, labels, positions, mask = stack_batches(
            batches,
            pad_token_id=self.tokenizer.pad_token_id,
            pack_width=self.settings.pack_width,
            dtype=self.params[EMBED].dtype,
            device=self.device,
        )
        full = members == list(range(self.size))
        where = torch.tensor(members, device=self.device)
        live = {
            k: (v if full else v.index_select(0, where)).detach().requires_grad_(True)
            for k, v in self.params.items()
        }
        logits, _ = self.model.forward(live, ids, positions, mask)
        m = len(members)
        targets = labels[:, :, 1:].reshape(m, -1)
        flat = logits[:, :, :-1].reshape(-1, logits.shape[-1]).float()
        token_loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100, reduction="none")
        counts = (targets != -100).sum(1)
        losses = token_loss.view(m, -1).sum(1) / counts.clamp(min=1)
        names = list(live)
        grads = torch.autograd.grad(losses.sum(), [live[k] for k in names])
        steps = []
        for i in members:
            self.states[i].opt_steps += 1
            steps.append(self.states[i].opt_steps)
        grads_by_name = dict(zip(names, grads, strict=True))
        self.optim.step(self.params, where, full, grads_by_name, rates, steps)
        return [float(x) for x in losses.detach()]

    # -- checkpoints -------------------------------------------------------------------------
    def save_member(self, index: int, path: str | Path) -> None:
        """Member ``index``'s weights, AdamW moments and counters, in ``path`` (a directory)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            "params": {k: v[index].clone() for k, v in self.params.items()},
            "exp_avg": {k: v[index].clone() for k, v in self.optim.exp_avg.items()},
            "exp_avg_sq": {k: v[index].clone() for k, v in self.optim.exp_avg_sq.items()},
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
            ("exp_avg", self.optim.exp_avg),
            ("exp_avg_sq", self.optim.exp_avg_sq),
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
