"""A student's weights on disk and in memory: checkpoints, the base to reset to, LoRA adapters.

A checkpoint directory holds the weights (``save_pretrained``'s files: the
full model, or with LoRA the adapter only), the optimizer state when there is
one (:data:`OPTIMIZER_FILE`) and a small JSON state (:data:`STATE_FILE`) with
what resume needs. Loading checks that every tensor is accounted for, so a
checkpoint of another model or another LoRA config is an error, not a silent
partial load.

``reset`` needs the untrained student back. Full fine-tuning keeps a copy of
the base weights (:func:`snapshot_weights`); a LoRA student never changes its
base weights, and re-initialising its adapter from the seed is the whole of a
reset (a second copy of a large model would double its memory for nothing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from teachgym.errors import MissingDependency

STATE_FILE = "student_state.json"
OPTIMIZER_FILE = "optimizer.pt"
_WEIGHTS_FILE = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"
#: Short names accepted in a config's ``lora`` block, and peft's names for them.
_LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}

LoraInit = bool | str


def checkpoint_dir(model: Any, given: str | Path | None) -> str | None:
    """The base checkpoint directory: ``given``, else the config's ``_name_or_path`` if a dir."""
    if given is not None:
        return str(given)
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name and Path(str(name)).is_dir() else None


def with_lora(model: Any, lora: Mapping[str, Any]) -> tuple[Any, LoraInit]:
    """``model`` wrapped in a LoRA adapter, and the adapter's initialisation.

    Initialisations that read or change the base weights (PiSSA, OLoRA, ...),
    DoRA's magnitude vectors and ``modules_to_save`` copies cannot be redone
    by re-initialising the adapter alone, so ``reset`` could not restore the
    untrained student; they are refused here rather than half-supported.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ModuleNotFoundError as err:
        raise MissingDependency("LoRA (student_kwargs.lora)", "peft") from err
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
    with torch.random.fork_rng(devices=[]):  # init_adapter seeds the real initialisation
        wrapped = get_peft_model(model, config)
    return wrapped, config.init_lora_weights


def init_adapter(model: Any, init: LoraInit, seed: int, device: torch.device) -> None:
    """Fresh LoRA weights, seeded: the same seed gives the same adapter.

    peft's own per-layer initialisation (A random, B zero, so a fresh adapter
    leaves the base model's outputs unchanged), under a forked RNG so that the
    process-wide generator is left alone.
    """
    from peft.tuners.lora import LoraLayer

    devices = []
    if device.type == "cuda":
        devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for name in module.lora_A:
                    module.reset_lora_parameters(name, init)


def snapshot_weights(model: Any) -> dict[str, torch.Tensor]:
    """A detached copy of every tensor of the model's state (full fine-tuning's base)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_quietly(model: Any, path: Path) -> None:
    """``save_pretrained`` without its per-call progress bar: a run saves every step, and
    a bar per checkpoint would bury the run's own progress display. The global setting
    is restored, so a user's own transformers calls keep their bars."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(path))
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def write_checkpoint(
    path: Path, model: Any, optimizer: torch.optim.Optimizer | None, state: Mapping[str, Any]
) -> None:
    """Weights, optimizer state (when there is an optimizer) and ``state`` as JSON.

    Full weights go through ``transformers``' ``save_pretrained`` too:
    safetensors' ``save_model`` keeps one name of tied tensors, and picks
    ``lm_head.weight``, so the checkpoint had no ``embed_tokens`` and anything
    reading it but the student (vLLM, ``from_pretrained``) would get the base
    embedding. A peft model writes its adapter only.
    """
    path.mkdir(parents=True, exist_ok=True)
    save_quietly(model, path)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), path / OPTIMIZER_FILE)
    (path / STATE_FILE).write_text(json.dumps(state))


def read_state(path: Path, *, mode: str, lora: bool) -> dict[str, Any]:
    """The JSON state :func:`write_checkpoint` wrote, if saved by a student of this
    ``mode`` that trains what this one does (an adapter with ``lora``, else full weights)."""
    state = dict(json.loads((path / STATE_FILE).read_text()))
    if state["mode"] != mode:
        raise ValueError(f"checkpoint was saved in mode {state['mode']!r}, not {mode!r}")
    saved_lora = bool(state.get("lora", False))
    if saved_lora != lora:
        kinds = {True: "a LoRA adapter", False: "full weights"}
        raise ValueError(
            f"checkpoint holds {kinds[saved_lora]} but this student trains {kinds[lora]}"
        )
    return state


def read_optimizer(path: Path, device: torch.device) -> Any | None:
    """The optimizer state :func:`write_checkpoint` wrote, or ``None`` if it wrote none."""
    if not (path / OPTIMIZER_FILE).exists():
        return None
    return torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True)


def load_full_weights(model: Any, path: Path, device: torch.device) -> None:
    """Full weights from a checkpoint (one file or shards); every tensor must be accounted for.

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


def load_adapter(model: Any, path: Path, device: torch.device) -> None:
    """Adapter weights from a checkpoint; every adapter tensor must be found."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    weights = load_peft_weights(str(path), device=str(device))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"adapter in {path} does not match this student's LoRA config: "
            f"missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}"
        )
