"""The options of :class:`~teachgym.students.hf.HFStudent` and the student presets.

Everything here is decided before a model is touched: the options' types,
bounds and defaults (:class:`HFStudentOptions`, the one place they are
written; the presets' models subclass it with their own defaults), which
device and dtype, which decoding limits a task implies, and whether the
options make sense together (one clear error at construction rather than a
failure mid-episode).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import torch
from pydantic import Field

from teachgym.envs.tasks.base import AnswerLength, StopStrings
from teachgym.options import Options
from teachgym.vllm_support import VLLM_INSTALL, vllm_installed

Mode = Literal["accumulate", "continual"]
EvalBackend = Literal["hf", "vllm"]

EVAL_BACKENDS: tuple[str, ...] = get_args(EvalBackend)
Schedule = Literal["inverse_sqrt", "constant"]
Dtype = Literal[
    "auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "bf16_pure", "fp16_pure"
]
StopString = Annotated[str, Field(min_length=1)]
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
#: The suffix that names the old pure half-precision training (``bf16_pure``, ``fp16_pure``).
PURE = "_pure"


class HFStudentOptions(Options):
    """What :class:`~teachgym.students.hf.HFStudent` takes from ``student_kwargs``.

    The class docstring of ``HFStudent`` explains each option at length.
    """

    mode: Mode = Field(
        default="continual",
        description="continual: keep training the current weights on new data; accumulate: "
        "retrain from the base weights on all data so far",
    )
    lr: float = Field(default=1e-3, gt=0.0, description="AdamW learning rate")
    epochs: int = Field(default=1, ge=1, description="passes over the data per train call")
    batch_size: int = Field(default=64, ge=1, description="examples per optimizer step")
    eval_batch_size: int = Field(default=512, ge=1, description="prompts per decoding pass")
    max_new_tokens: int = Field(
        default=8,
        ge=1,
        description="tokens decoded per answer at most; a preset built for a task uses the "
        "task's longest answer + 1 unless set",
    )
    warmup_steps: int = Field(default=50, ge=0, description="linear warm-up, optimizer steps")
    lr_schedule: Schedule = Field(default="inverse_sqrt", description="decay after warm-up")
    cooldown: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="last fraction of the horizon over which the rate falls to 0",
    )
    packing: bool | Literal["auto"] = Field(
        default="auto", description="pack examples into rows; auto: if the model honours it"
    )
    pack_width: int = Field(default=64, ge=1, description="tokens per packed row")
    lora: dict[str, Any] | None = Field(
        default=None,
        description="peft LoraConfig arguments (r, alpha, dropout, target_modules, ...) to "
        "train adapters only; null: full fine-tuning",
    )
    device: str | None = Field(
        default=None, description="cpu, cuda, cuda:N; null or auto: CUDA when available"
    )
    dtype: Dtype = Field(
        default="auto",
        description="auto: bf16 mixed precision on CUDA, float32 on the CPU; bf16/fp16: "
        "float32 master weights under autocast; fp32; bf16_pure/fp16_pure: all half precision",
    )
    grad_accum_steps: int = Field(default=1, ge=1, description="micro-batches per batch")
    max_batch_tokens: int | None = Field(
        default=None,
        ge=1,
        description="most tokens one forward pass holds; a larger batch runs as micro-batches "
        "with the same update; null: no limit",
    )
    compile: bool = Field(default=False, description="train through torch.compile")
    gradient_checkpointing: bool = Field(
        default=False, description="recompute activations in the backward pass"
    )
    chat_template: bool | None = Field(
        default=None, description="wrap prompts in the tokenizer's chat template; null: if any"
    )
    max_prompt_tokens: int | None = Field(
        default=None, ge=1, description="a longer prompt keeps its last tokens"
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="a longer completion keeps its first tokens"
    )
    stop: list[StopString] | tuple[StopString, ...] = Field(
        default=(), description="strings that end a completion"
    )
    eval_backend: EvalBackend = Field(
        default="hf", description="who decodes in predict: hf, or a vLLM engine"
    )
    vllm_kwargs: dict[str, Any] | None = Field(
        default=None, description="more VLLMEvaluator.from_student arguments"
    )
    eval_dir: str | Path | None = Field(
        default=None, description="where the vLLM backend writes weights; null: a temp dir"
    )
    base_checkpoint: str | Path | None = Field(
        default=None, description="the directory the base model was loaded from"
    )


def check_student_options(
    eval_backend: str, evaluator_factory: Callable[..., Any] | None, tokenizer: Any
) -> None:
    """Refuse an evaluation backend or a tokenizer the student cannot work with (the
    options' own types and bounds are :class:`HFStudentOptions`').

    ``eval_backend="vllm"`` without an ``evaluator_factory`` needs vLLM
    installed: the error comes at construction, not after the first training
    step.
    """
    if eval_backend == "vllm" and evaluator_factory is None and not vllm_installed():
        raise ModuleNotFoundError(
            f"eval_backend='vllm' needs vLLM, which is not installed: {VLLM_INSTALL}",
            name="vllm",
        )
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs a pad token and an eos token")


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU; otherwise as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return torch.device(device)


@dataclass(frozen=True)
class Precision:
    """How a student stores, updates and computes with its weights.

    ``compute`` is the dtype of the matrix multiplications. With a half
    ``compute`` and ``pure`` false (mixed precision, the default for bf16 and
    fp16), the weights that are trained stay in float32 (master weights, and
    AdamW's state with them) and forward and backward run under
    ``torch.autocast``: an update smaller than half precision's resolution
    (bf16 keeps 8 bits of mantissa, so ``w + u`` rounds back to ``w`` when
    ``|u| < |w| / 256``) still moves a float32 weight, where it would be lost
    in a bf16 one. Weights that are frozen (a LoRA student's base model) are
    stored in ``compute``: they are never updated, and half the memory is
    the point. ``pure``: everything stored in ``compute`` and updated there,
    no autocast (the behaviour before mixed precision; only by name, e.g.
    ``bf16_pure``). float32 ``compute`` is plain float32, no autocast.
    """

    compute: torch.dtype = torch.float32
    pure: bool = False

    @property
    def autocast(self) -> bool:
        """Does the forward pass run under ``torch.autocast`` to ``compute``?"""
        return self.compute != torch.float32 and not self.pure

    @property
    def scales_loss(self) -> bool:
        """fp16 mixed precision scales the loss (``GradScaler``): fp16 gradients underflow."""
        return self.autocast and self.compute == torch.float16

    def storage(self, *, trained: bool) -> torch.dtype:
        """The dtype of weights that are ``trained`` (float32 when mixed) or frozen."""
        return torch.float32 if trained and self.autocast else self.compute

    def context(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` to ``compute`` on ``device`` when mixed, else nothing."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.compute)


def resolve_precision(dtype: str | torch.dtype, device: torch.device) -> Precision:
    """The :class:`Precision` a config's ``dtype`` names.

    ``"auto"``: bf16 mixed precision on CUDA (tensor cores, fp32 master
    weights), plain float32 on the CPU (CPU kernels for bf16 are slow or
    missing on many machines, and fp32 keeps CPU results reproducible).
    ``"bf16"``/``"fp16"`` (or their long names, or a ``torch.dtype``): mixed
    precision; ``"fp32"``: plain float32; ``"bf16_pure"``/``"fp16_pure"``:
    weights stored and updated in half precision.
    """
    if isinstance(dtype, torch.dtype):
        return Precision(dtype)
    if dtype == "auto":
        return Precision(torch.bfloat16 if device.type == "cuda" else torch.float32)
    base, pure = (dtype[: -len(PURE)], True) if str(dtype).endswith(PURE) else (dtype, False)
    compute = _DTYPES.get(base)
    if compute is None or (pure and compute == torch.float32):
        names = [*sorted(_DTYPES), "bf16_pure", "fp16_pure"]
        raise ValueError(f"dtype must be 'auto' or one of {names}, got {dtype!r}")
    return Precision(compute, pure)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The compute dtype of :func:`resolve_precision` (``"auto"``: bf16 on CUDA, else fp32)."""
    return resolve_precision(dtype, device).compute


def task_generation_defaults(task: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Decoding limits the task knows: ``max_new_tokens`` and ``stop`` strings.

    A task's ``max_answer_length`` bounds decoding (plus one token for the
    end of sequence): a token more could only make an answer wrong, and every
    evaluation would pay for it. One token is at least one character for the
    tokenizers in use, so the bound never cuts a correct answer. An explicit
    ``max_new_tokens`` in the student's config wins. A task's ``stop_strings``
    are added to the config's ``stop``. ``task`` may be ``None`` (a student
    built on its own) or offer only these two protocols.
    """
    kwargs = dict(kwargs)
    if isinstance(task, AnswerLength):
        kwargs.setdefault("max_new_tokens", int(task.max_answer_length) + 1)
    task_stops = tuple(task.stop_strings or ()) if isinstance(task, StopStrings) else ()
    if task_stops:
        stops = list(kwargs.get("stop", ()))
        kwargs["stop"] = stops + [s for s in task_stops if s not in stops]
    return kwargs
