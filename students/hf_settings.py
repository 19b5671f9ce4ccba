"""The settings of an :class:`~teachgym.students.hf.HFStudent`, as read-only attributes.

A student's options live in its parts (the trainer's settings, the codec's
length limits, the decoder's stop rules and batch size, the evaluation
sync's engine); other code reads them off the student: the vLLM evaluator
(:meth:`~teachgym.students.vllm_eval.VLLMEvaluator.from_student`), the Ray
worker (``eval_batch_size``), benchmarks and tests. :class:`StudentSettings`
reads each from the part that holds it, so there is one copy of every
setting and it cannot go stale.
"""

from __future__ import annotations

from typing import Any

from teachgym.students.decoding import GreedyDecoder
from teachgym.students.encoding import TextCodec
from teachgym.students.eval_sync import EvaluatorSync
from teachgym.students.training import Packing, Trainer

__all__ = ["StudentSettings"]


class StudentSettings:
    """Read-only settings of a student built of a ``trainer``, a ``codec``, a ``decoder``
    and an ``eval_sync`` (a base class of :class:`~teachgym.students.hf.HFStudent`,
    which sets those four parts in its ``__init__``)."""

    trainer: Trainer
    codec: TextCodec
    decoder: GreedyDecoder
    eval_sync: EvaluatorSync

    @property
    def lr(self) -> float:
        return self.trainer.settings.lr

    @property
    def epochs(self) -> int:
        return self.trainer.settings.epochs

    @property
    def batch_size(self) -> int:
        return self.trainer.settings.batch_size

    @property
    def packing(self) -> Packing:
        """The packing in use: the option, until ``"auto"`` is resolved on the first batch."""
        return self.trainer.packing

    @property
    def chat_template(self) -> bool:
        return self.codec.chat_template

    @property
    def max_prompt_tokens(self) -> int | None:
        return self.codec.max_prompt_tokens

    @property
    def max_completion_tokens(self) -> int | None:
        return self.codec.max_completion_tokens

    @property
    def stop(self) -> tuple[str, ...]:
        return self.decoder.stop

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end a completion: the tokenizer's eos and the generation config's."""
        return self.decoder.stop_ids

    @property
    def max_new_tokens(self) -> int:
        return self.decoder.max_new_tokens

    @property
    def eval_batch_size(self) -> int:
        return self.decoder.batch_size

    @property
    def evaluator(self) -> Any | None:
        """The vLLM evaluator, once the first ``predict`` built it."""
        return self.eval_sync.evaluator
