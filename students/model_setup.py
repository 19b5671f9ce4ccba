"""The model a student trains: loaded from a checkpoint, then prepared for training.

Loading (a hub id or a local directory): the tokenizer is made fit for
batched training and greedy decoding (an eos token required, padding on the
left, a pad token if it has none) and the weights are loaded in the dtype
they are stored in, under a forked RNG
(:func:`~teachgym.students.hf.hf_student_from_pretrained` builds the student
from them). Preparing (:func:`prepare_model`, for every
:class:`~teachgym.students.hf.HFStudent`): gradient checkpointing, the
storage precision, the LoRA adapter, the device, and the base weights that
``reset`` returns to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from teachgym.students import checkpoints
from teachgym.students.options import Precision
from teachgym.students.training import enable_gradient_checkpointing

__all__ = ["PreparedModel", "load_causal_lm", "load_tokenizer", "prepare_model"]


def load_tokenizer(model: str) -> Any:
    """The tokenizer of checkpoint ``model``, padding on the left.

    Raises ``ValueError`` when it has no eos token (a completion must be able to
    end). A tokenizer without a pad token pads with its eos token (padding is
    masked out, so which id is moot).
    """
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {model!r} has no eos token; the student needs one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(model: str, torch_dtype: torch.dtype, seed: int) -> Any:
    """The causal LM of checkpoint ``model`` with its weights in ``torch_dtype``.

    Any weight the checkpoint lacks (a fresh head) is initialised from ``seed``,
    in a forked RNG, so the global random state is untouched.
    """
    with torch.random.fork_rng(devices=[]):  # seeds any fresh heads without touching global state
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_pretrained(model, **{_dtype_kwarg(): torch_dtype})


def _dtype_kwarg() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56."""
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


@dataclass
class PreparedModel:
    """What :func:`prepare_model` made: the model to train, how its LoRA adapter is
    initialised (``True`` without LoRA) and the base weights (``None`` with LoRA)."""

    model: Any
    lora_init: checkpoints.LoraInit
    base: dict[str, torch.Tensor] | None


def prepare_model(
    model: Any,
    lora: Mapping[str, Any] | None,
    gradient_checkpointing: bool,
    *,
    precision: Precision,
    device: torch.device,
    seed: int,
) -> PreparedModel:
    """The model on ``device``, in its precision, with its LoRA adapter (seeded by
    ``seed``) when ``lora`` asks for one.

    Full fine-tuning stores every weight as trained (float32 under mixed
    precision); LoRA stores the frozen base in the compute dtype and, under
    mixed precision, the adapter in float32. Full fine-tuning keeps a copy of
    the base weights for ``reset``, a LoRA student none (it re-initialises its
    adapter instead).
    """
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    lora_init: checkpoints.LoraInit = True
    model = model.to(precision.storage(trained=not lora))
    if lora:
        model, lora_init = checkpoints.with_lora(model, lora)
        if precision.autocast:
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
    model = model.to(device)
    if lora:
        checkpoints.init_adapter(model, lora_init, seed, device)
    base = None if lora else checkpoints.snapshot_weights(model)
    return PreparedModel(model, lora_init, base)
