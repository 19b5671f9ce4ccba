"""The checks and defaults of :class:`~teachgym.students.hf.HFStudent`'s options.

Everything here is decided before a model is touched: which device and dtype,
which decoding limits a task implies, and whether the options make sense at
all (one clear error at construction rather than a failure mid-episode).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from teachgym.envs.tasks.base import AnswerLength, StopStrings
from teachgym.vllm_support import VLLM_INSTALL, vllm_installed

Mode = Literal["accumulate", "continual"]
EvalBackend = Literal["hf", "vllm"]

EVAL_BACKENDS = ("hf", "vllm")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def check_positive_ints(values: Mapping[str, Any]) -> None:
    """Each value must be an ``int`` (not a ``bool``) of at least 1; the error names it."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_student_options(
    mode: str, eval_backend: str, evaluator_factory: Callable[..., Any] | None, tokenizer: Any
) -> None:
    """Refuse a student's mode, evaluation backend or tokenizer that it cannot work with.

    (The parts check their own options: ``TrainSettings``, ``TextCodec``,
    ``GreedyDecoder``.) ``eval_backend="vllm"`` without an ``evaluator_factory`` needs vLLM
    installed: the error comes at construction, not after the first training
    step.
    """
    if mode not in ("accumulate", "continual"):
        raise ValueError(f"mode must be 'accumulate' or 'continual', got {mode!r}")
    if eval_backend not in EVAL_BACKENDS:
        raise ValueError(f"eval_backend must be one of {EVAL_BACKENDS}, got {eval_backend!r}")
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
