"""Students: models the teacher trains. See :class:`Student`.

Modules: ``base`` (the protocol), ``hf`` (:class:`HFStudent`, any
``transformers`` causal LM, composed of ``encoding``, ``training``,
``decoding``, ``checkpoints`` and ``eval_sync``; its option checks in
``options``), ``vllm_eval`` (the vLLM evaluation engine), ``tiny`` and
``smollm2`` (presets), ``tokenizer`` (the offline character tokenizer) and
``remote`` (a student in a Ray actor). The students package imports nothing
from ``teachgym.agents`` or ``teachgym.experiments``.

Only the protocol is imported eagerly: the model code pulls in torch and
transformers (seconds), which a driver process, a teacher or a statistics
script should not pay for. ``from teachgym.students import HFStudent`` still
works; it imports the model code on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from teachgym.students.base import Student

if TYPE_CHECKING:
    from teachgym.students.hf import HFStudent
    from teachgym.students.tiny import make_tiny_student, tiny_llama
    from teachgym.students.tokenizer import build_char_tokenizer

_LAZY = {
    "HFStudent": "teachgym.students.hf",
    "make_tiny_student": "teachgym.students.tiny",
    "tiny_llama": "teachgym.students.tiny",
    "build_char_tokenizer": "teachgym.students.tokenizer",
}

__all__ = ["HFStudent", "Student", "build_char_tokenizer", "make_tiny_student", "tiny_llama"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
