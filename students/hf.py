"""A student wrapping any ``transformers`` causal language model.

Pretrained checkpoints (``student: hf``, or the offline ``smollm2`` preset) go
through the same class as the tiny student, so that modes, schedules, packing
and resume have one implementation. :class:`HFStudent` keeps the
:class:`~teachgym.students.base.Student` protocol and composes one part per job:

- :mod:`~teachgym.students.encoding`: prompts and examples to token ids (chat
  template, length limits whose cuts are counted);
- :mod:`~teachgym.students.training`: SFT with the loss on completions only,
  packing, gradient accumulation, AdamW and the learning-rate schedule;
- :mod:`~teachgym.students.decoding`: batched KV-cached greedy decoding;
- :mod:`~teachgym.students.checkpoints`: checkpoints, the base weights that
  ``reset`` returns to, LoRA adapters through ``peft``;
- :mod:`~teachgym.students.eval_sync`: the optional vLLM evaluation engine
  (``eval_backend: vllm``), which gets the current weights before each
  ``predict``;
- :mod:`~teachgym.students.options`: option checks, device and dtype;
- :mod:`~teachgym.students.model_setup`: loading a checkpoint, and the model
  put in its precision, on its device, with its LoRA adapter;
- :mod:`~teachgym.students.hf_settings`: the settings read off the student
  (:class:`~.hf_settings.StudentSettings`, a base class);
- :mod:`~teachgym.students.perf`: the throughput and memory ``take_perf`` reports.

What the parts need on top of the tiny student's behaviour are options that
default to it.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from teachgym.options import derive, takes
from teachgym.students import checkpoints
from teachgym.students.decoding import GreedyDecoder, stop_token_ids
from teachgym.students.encoding import TextCodec, resolve_chat_template
from teachgym.students.eval_sync import EvaluatorSync
from teachgym.students.hf_settings import StudentSettings
from teachgym.students.model_setup import load_causal_lm, load_tokenizer, prepare_model
from teachgym.students.options import (
    EvalBackend,
    HFStudentOptions,
    Mode,
    check_student_options,
    resolve_device,
    resolve_precision,
    task_generation_defaults,
)
from teachgym.students.perf import PerfCounters
from teachgym.students.training import (
    Trainer,
    TrainSettings,
    data_order,
)
from teachgym.types import Example, Problem

# Re-exported: other modules import these from here.
from teachgym.vllm_support import VLLM_INSTALL as VLLM_INSTALL
from teachgym.vllm_support import vllm_installed as vllm_installed


class HFStudent(StudentSettings):
    """Fine-tunes and queries a causal LM.

    Args:
        model: a ``transformers`` causal LM (``AutoModelForCausalLM`` or built
            from a config). Its weights at construction are the base that
            ``reset`` returns to.
        tokenizer: the model's tokenizer; needs ``pad_token_id`` and
            ``eos_token_id``.
        mode: ``"accumulate"`` retrains from the base weights (a fresh adapter
            with LoRA) on all data seen so far at every ``train`` call (as
            DataEnvGym does); ``"continual"`` keeps training the current
            weights on the new data only.
        lr, epochs, batch_size: SFT hyper-parameters for one ``train`` call.
            ``batch_size`` is the number of examples per optimizer step,
            whatever ``grad_accum_steps`` is.
        warmup_steps, lr_schedule: linear warm-up over ``warmup_steps`` optimizer
            steps, then ``"inverse_sqrt"`` decay or a ``"constant"`` rate.
        cooldown: the last fraction of the training horizon over which the rate
            falls linearly to zero. In continual mode the horizon is the
            episode's data budget, which the environment passes to
            :meth:`set_horizon`; a student that keeps a high rate to the end of
            an episode ends wherever its last noisy update left it, and a
            teacher's final score would hinge on that. In accumulate mode every
            call is a complete training run and cools down at its own end.
            ``0`` disables it.
        eval_batch_size, max_new_tokens: greedy decoding settings.
        packing: pack several examples into one row; ``"auto"`` first checks
            that the model honours it (see :class:`.training.TrainSettings`).
        pack_width: tokens per packed row (at least the longest example).
        seed: drives data order and LoRA initialisation, so the same seed gives
            the same weights.
        lora: ``None`` for full fine-tuning, or ``peft.LoraConfig`` keyword
            arguments (``r``, ``alpha``/``lora_alpha``,
            ``dropout``/``lora_dropout``, ``target_modules``, ...) to train
            adapters only (needs the ``llm`` extra). Only initialisations that
            ``reset`` can repeat are accepted (default or ``"gaussian"``; no
            DoRA, no ``modules_to_save``).
        device: ``"cpu"``, ``"cuda"`` (``"cuda:N"``), or ``None``/``"auto"``
            for CUDA when available.
        dtype: the precision (see :class:`~.options.Precision`): ``"auto"``
            (bf16 mixed precision on CUDA, float32 on the CPU), ``"fp32"``,
            ``"bf16"``/``"fp16"`` (mixed: trained weights and optimizer state
            in float32, compute under autocast, a LoRA student's frozen base in
            half precision) or ``"bf16_pure"``/``"fp16_pure"`` (everything in
            half precision, updates too). The model is cast accordingly.
        grad_accum_steps: split each optimizer batch into this many
            micro-batches, for memory only: the update is the same as one
            full batch (each micro-batch's loss is weighted by its share of
            the batch's completion tokens).
        max_batch_tokens: the most tokens (rows times width) one forward pass
            of training holds; a batch that needs more runs as micro-batches
            with the same update. ``batch_size`` stays the optimizer's batch.
        compile: train through ``torch.compile`` of the model (off by default:
            the compilation costs more than it saves on short runs and small
            models).
        gradient_checkpointing: recompute activations in the backward pass,
            trading compute for memory on long sequences or big models.
        chat_template: wrap prompts in the tokenizer's chat template (the
            prompt as the user turn, the completion as the assistant turn).
            ``None`` uses it when the tokenizer has one.
        max_prompt_tokens, max_completion_tokens: length limits. A prompt
            keeps its last tokens (the question and the assistant header), a
            completion its first ones (and loses its end-of-sequence token,
            so the model is not taught to stop mid-answer). Every cut is
            counted: ``train`` returns ``truncated_prompts`` and
            ``truncated_completions`` whenever a limit is set, and ``predict``
            warns and records ``last_predict_info``.
        stop: strings that end a completion (the completion is cut before
            the first one), on top of the end-of-sequence token(s).
        eval_backend: who decodes in :meth:`predict`. ``"hf"``: the
            :class:`~.decoding.GreedyDecoder` on this model. ``"vllm"``: a
            :class:`~teachgym.students.vllm_eval.VLLMEvaluator` of the base
            model, built on the first ``predict``, kept for the run and handed
            every change of the weights in a new directory under ``eval_dir``
            (see :class:`~.eval_sync.EvaluatorSync`). Needs vLLM (see :data:`VLLM_INSTALL`).
        vllm_kwargs: more :meth:`VLLMEvaluator.from_student` arguments
            (``max_model_len``, ``gpu_memory_utilization`` via ``engine_extra``, ...).
        evaluator_factory: builds the evaluator from the student instead of
            ``VLLMEvaluator.from_student`` (tests inject a stand-in); the
            contract is in :mod:`~teachgym.students.eval_sync`.
        eval_dir: where the vLLM backend writes weights for the engine; a
            private temporary directory (deleted by :meth:`close`) by default.
        base_checkpoint: the directory the base model was loaded from (the
            engine loads it); by default the model config's ``_name_or_path``
            when that is a directory.

    Parts (public, for reuse and inspection): ``codec``
    (:class:`~.encoding.TextCodec`), ``trainer`` (:class:`~.training.Trainer`:
    the optimizer and the schedule's counters), ``decoder``
    (:class:`~.decoding.GreedyDecoder`) and ``eval_sync``
    (:class:`~.eval_sync.EvaluatorSync`). ``last_predict_info`` holds the prompt
    truncations of the last ``predict`` when a limit is set; ``base_checkpoint``
    the directory of the base weights (what a vLLM engine loads), if known.

    The student sets no process-wide state: torch's thread count belongs to
    whoever owns the process (the runner sets it from the config's
    ``threads``; a Ray worker from its ``num_cpus``).

    :meth:`take_perf` reports training and evaluation tokens per second and
    peak device memory since its last call (the run directory's
    ``perf.jsonl``); they vary run to run and never enter ``steps.jsonl``.
    """

    @takes(HFStudentOptions)
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        mode: Mode,
        lr: float,
        epochs: int,
        batch_size: int,
        eval_batch_size: int,
        max_new_tokens: int,
        warmup_steps: int,
        lr_schedule: str,
        cooldown: float,
        packing: bool | Literal["auto"],
        pack_width: int,
        seed: int = 0,
        lora: Mapping[str, Any] | None,
        device: str | None,
        dtype: str | torch.dtype,
        grad_accum_steps: int,
        max_batch_tokens: int | None,
        compile: bool,
        gradient_checkpointing: bool,
        chat_template: bool | None,
        max_prompt_tokens: int | None,
        max_completion_tokens: int | None,
        stop: Sequence[str],
        eval_backend: EvalBackend,
        vllm_kwargs: Mapping[str, Any] | None,
        evaluator_factory: Callable[[HFStudent], Any] | None = None,
        eval_dir: str | Path | None,
        base_checkpoint: str | Path | None,
    ) -> None:
        check_student_options(eval_backend, evaluator_factory, tokenizer)
        settings = TrainSettings(
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            warmup_steps=warmup_steps,
            lr_schedule=lr_schedule,
            cooldown=cooldown,
            pack_width=pack_width,
            grad_accum_steps=grad_accum_steps,
            packing=packing,
            max_batch_tokens=max_batch_tokens,
            compile=compile,
        )
        chat_template = resolve_chat_template(tokenizer, chat_template)
        self.codec = TextCodec(tokenizer, chat_template, max_prompt_tokens, max_completion_tokens)
        stop_ids = stop_token_ids(model, tokenizer)  # before LoRA wraps the model
        self.decoder = GreedyDecoder(self.codec, stop_ids, stop, max_new_tokens, eval_batch_size)
        self.seed, self.mode, self.eval_backend = seed, mode, eval_backend
        self.tokenizer = tokenizer
        self.base_checkpoint = checkpoints.checkpoint_dir(model, base_checkpoint)
        self.model = self._prepare_model(model, lora, gradient_checkpointing, device, dtype)
        self.trainer = self._make_trainer(settings)
        self.eval_sync = EvaluatorSync(evaluator_factory, vllm_kwargs, eval_dir)
        self._init_episode_state()

    def _make_trainer(self, settings: TrainSettings) -> Trainer:
        """The trainer of the prepared model, on its device and in its precision."""
        pad = self.tokenizer.pad_token_id
        return Trainer(
            self.model, settings, device=self.device, pad_token_id=pad, precision=self.precision
        )

    def _init_episode_state(self) -> None:
        """What changes as the student is used: the horizon the env sets, the data seen
        and ``train`` calls made (``reset`` clears those two), the last ``predict``'s
        truncations and the performance counters."""
        self.last_predict_info: dict[str, int] = {}
        self.horizon: int | None = None
        self._seen: list[Example] = []
        self._calls = 0
        self._perf = PerfCounters()

    def _prepare_model(
        self,
        model: Any,
        lora: Mapping[str, Any] | None,
        gradient_checkpointing: bool,
        device: str | None,
        dtype: str | torch.dtype,
    ) -> Any:
        """The model on its device, in its precision, with its LoRA adapter when asked for
        (:func:`~.model_setup.prepare_model`). Sets ``device``, ``precision``, ``lora``,
        ``gradient_checkpointing``, and ``_base`` (``None`` with LoRA) for ``reset``."""
        self.device = resolve_device(device)
        self.precision = resolve_precision(dtype, self.device)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.lora = bool(lora)
        prepared = prepare_model(
            model,
            lora,
            gradient_checkpointing,
            precision=self.precision,
            device=self.device,
            seed=self.seed,
        )
        self._lora_init: checkpoints.LoraInit = prepared.lora_init
        self._base = prepared.base
        return prepared.model

    def batch_tensors(self, batch: Sequence[Any], packed: bool) -> dict[str, torch.Tensor]:
        """Model inputs for one optimizer step (see :func:`.training.batch_tensors`)."""
        return self.trainer.batch_tensors(batch, packed)

    # -- the Student protocol ---------------------------------------------------------------
    def set_horizon(self, examples: int | None) -> None:
        """How many examples of new data the student will get over an episode.

        The environment calls this with the episode's data budget, so the
        learning rate can cool down as the budget runs out (see ``cooldown``).
        """
        if examples is not None and examples < 1:
            raise ValueError(f"the horizon must be >= 1 example, got {examples}")
        self.horizon = examples

    def train(self, examples: Sequence[Example]) -> dict[str, float]:
        """One SFT pass over the new data (continual) or all data (accumulate).

        With a vLLM evaluator the engine sleeps during training and the weights
        are marked changed, even when training fails half-way (see
        :meth:`EvaluatorSync.training`).
        """
        with self.eval_sync.training():
            return self._fit(examples)

    def _fit(self, examples: Sequence[Example]) -> dict[str, float]:
        self._calls += 1
        if self.mode == "accumulate":
            self._seen.extend(examples)
            self._restore_base()
            data = list(self._seen)
        else:
            data = list(examples)
        if not data:
            return {"loss": float("nan"), "steps": 0.0, "tokens": 0.0}
        truncated: Counter[str] = Counter()
        encoded = self.codec.encode_examples(data, truncated)
        start = time.perf_counter()
        metrics = self.trainer.fit(
            encoded,
            data_order(self.seed, self._calls),
            continual=self.mode == "continual",
            horizon=self.horizon,
        )
        self._perf.add("train", metrics["tokens"], time.perf_counter() - start)
        if self.max_prompt_tokens is not None or self.max_completion_tokens is not None:
            metrics["truncated_prompts"] = float(truncated["truncated_prompts"])
            metrics["truncated_completions"] = float(truncated["truncated_completions"])
        return metrics

    @torch.no_grad()
    def predict(self, problems: Sequence[Problem]) -> list[str]:
        """Greedy completions, batched with left padding and a KV cache (or by vLLM).

        Prompts longer than ``max_prompt_tokens`` keep their last tokens; how
        many were cut is in ``last_predict_info`` and a warning.
        """
        truncated: Counter[str] = Counter()
        if self.eval_backend == "vllm":
            out = self.eval_sync.predict(self, problems, truncated)
        else:
            start = time.perf_counter()
            with self.precision.context(self.device):
                out = self.decoder.predict(self.model, [p.prompt for p in problems], truncated)
            self._perf.add("eval", self.decoder.last_tokens, time.perf_counter() - start)
        if self.max_prompt_tokens is not None:
            n = truncated["truncated_prompts"]
            self.last_predict_info = {"truncated_prompts": n}
            if n:
                warnings.warn(
                    f"{n} of {len(problems)} prompts were longer than max_prompt_tokens="
                    f"{self.max_prompt_tokens} and lost their first tokens",
                    stacklevel=2,
                )
        return out

    def take_perf(self) -> dict[str, Any]:
        """Tokens per second of training and of evaluation (``hf`` backend: prompt
        plus generated tokens) and the peak device memory, since the last call.

        Keys with nothing measured are left out; ``peak_memory_mib`` is
        CUDA's peak allocated memory on the student's device (its counter
        is reset by this call), absent on the CPU.
        """
        return self._perf.take(self.device)

    def sync_evaluator(self) -> Path | None:
        """Hand changed weights to the vLLM evaluator (built if need be); returns the
        adapter directory to evaluate (see :meth:`EvaluatorSync.sync`)."""
        return self.eval_sync.sync(self)

    def _restore_base(self) -> None:
        """The untrained student: the base weights, or a fresh adapter on them."""
        if self.lora:
            checkpoints.init_adapter(self.model, self._lora_init, self.seed, self.device)
        else:
            assert self._base is not None
            self.model.load_state_dict(self._base)

    def reset(self) -> None:
        """Back to the base weights (a fresh adapter with LoRA) with no data seen."""
        self._restore_base()
        self._seen = []
        self._calls = 0
        self.trainer.reset()
        self.eval_sync.mark_changed()

    def save(self, path: str | Path) -> None:
        """Weights as safetensors plus the little state that resume needs.

        With LoRA only the adapter is written (``adapter_config.json`` and
        ``adapter_model.safetensors``); the base weights are whatever the
        checkpoint the student was built from holds. See
        :func:`~teachgym.students.checkpoints.write_checkpoint`. The vLLM
        evaluator's id counter is saved too, so a resumed run never hands out an
        id its engine already used.
        """
        trainer = self.trainer
        state: dict[str, Any] = {
            "mode": self.mode,
            "lora": self.lora,
            "calls": self._calls,
            "opt_steps": trainer.opt_steps,
            "examples_done": trainer.examples_done,
            "packing": trainer.packing,
            "seed": self.seed,
            "seen": [e.model_dump() for e in self._seen],
        }
        eval_state = self.eval_sync.state_dict()
        if eval_state is not None:
            state["evaluator"] = eval_state
        if trainer.scaler is not None:
            state["grad_scaler"] = trainer.scaler.state_dict()
        checkpoints.write_checkpoint(Path(path), self.model, trainer.opt, state)

    def load(self, path: str | Path) -> None:
        """Resume from :meth:`save`: weights, optimizer, counters, data seen, data order."""
        path = Path(path)
        state = checkpoints.read_state(path, mode=self.mode, lora=self.lora)
        if self.lora:
            checkpoints.load_adapter(self.model, path, self.device)
        else:
            checkpoints.load_full_weights(self.model, path, self.device)
        self._calls = int(state["calls"])
        self.seed = int(state["seed"])  # the data order continues as it would have
        self.trainer.packing = state.get("packing", self.trainer.packing)
        self.trainer.restore(
            int(state["opt_steps"]),
            int(state.get("examples_done", 0)),
            checkpoints.read_optimizer(path, self.device),
        )
        self._seen = [Example.model_validate(e) for e in state["seen"]]
        if self.trainer.scaler is not None and state.get("grad_scaler") is not None:
            self.trainer.scaler.load_state_dict(state["grad_scaler"])
        self.eval_sync.mark_changed()
        if state.get("evaluator") is not None:
            self.eval_sync.load_state_dict(state["evaluator"])

    def close(self) -> None:
        """Shut the vLLM engine down and delete the weights written for it.

        Safe to call twice, and a no-op for the ``hf`` backend. An
        ``eval_dir`` the caller chose keeps its directory; only the
        ``step_<n>`` directories this student wrote are removed.
        """
        eval_sync = getattr(self, "eval_sync", None)  # absent if __init__ failed
        if eval_sync is not None:
            eval_sync.close()

    def __del__(self) -> None:
        # A student dropped without close() must not leave an engine process behind.
        # At interpreter shutdown the modules close() needs may already be gone.
        with contextlib.suppress(Exception):
            self.close()


#: ``student: hf``: a checkpoint to load, where, and :class:`HFStudent`'s options.
PretrainedOptions = derive(
    "PretrainedOptions",
    (HFStudentOptions,),
    "Options of the ``hf`` student: the checkpoint, its dtype and device, and HFStudent's.",
    fields={
        "model": (str, Field(default="", description="a hub id or a local directory (needed)")),
    },
    device="auto",
)


@takes(PretrainedOptions)
def hf_student_from_pretrained(
    task: Any,
    seed: int = 0,
    *,
    model: str,
    dtype: str,
    device: str | None,
    **kwargs: Any,
) -> HFStudent:
    """Registry factory for ``student: hf``: a hub or local checkpoint.

    ``model`` is a hub id or a local directory; loading from the hub needs
    network access, a local directory does not. ``dtype`` (see
    :class:`HFStudent`; ``"auto"``: bf16 mixed precision on CUDA, float32 on
    the CPU) and ``device`` choose how and where the weights live: they are
    loaded in the dtype the student stores them in (a LoRA student's base in
    half precision, so a large model never passes through float32). Every
    other argument goes to :class:`HFStudent` (``lora``, ``chat_template``,
    length limits, ...). A tokenizer without a pad token pads with its eos
    token (padding is masked out, so which id is moot).
    """
    if not model:
        raise ValueError("student 'hf' needs student_kwargs.model (a hub id or a local path)")
    target = resolve_device(device)
    torch_dtype = resolve_precision(dtype, target).storage(trained=not kwargs.get("lora"))
    kwargs = task_generation_defaults(task, kwargs)
    tokenizer = load_tokenizer(model)
    lm = load_causal_lm(model, torch_dtype, seed)
    kwargs.setdefault("base_checkpoint", model if Path(model).is_dir() else None)
    return HFStudent(lm, tokenizer, seed=seed, device=str(target), dtype=dtype, **kwargs)
