"""The ``tiny`` preset: a small Llama built from a config, nothing downloaded.

Random initialisation is seeded, so the same seed gives bit-identical base
weights on CPU, and the character tokenizer is built from the task's alphabet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from pydantic import Field, model_validator
from transformers import LlamaConfig, LlamaForCausalLM

from teachgym.envs.tasks.base import TaskCapabilities
from teachgym.options import Options, derive, takes
from teachgym.students.hf import HFStudent, Mode, task_generation_defaults
from teachgym.students.options import HFStudentOptions
from teachgym.students.tokenizer import build_char_tokenizer


class TinyArchitecture(Options):
    """The tiny Llama's shape."""

    hidden_size: int = Field(default=128, ge=1, description="model width")
    layers: int = Field(default=2, ge=1, description="transformer layers")
    heads: int = Field(default=8, ge=1, description="attention heads (divide hidden_size)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyArchitecture:
        if self.hidden_size % self.heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of heads ({self.heads}): "
                f"each of the {self.heads} attention heads gets hidden_size / heads dimensions"
            )
        return self


#: ``student: tiny``: the tiny Llama's shape, and :class:`HFStudent`'s options with the
#: learning rates the README's default experiment measures (see :func:`make_tiny_student`).
TinyOptions = derive(
    "TinyOptions",
    (HFStudentOptions, TinyArchitecture),
    "Options of the ``tiny`` student: its shape and HFStudent's, with its own rates.",
    lr=4e-3,
    batch_size=128,
    warmup_steps=300,
    cooldown=0.3,
)


@takes(TinyArchitecture)
def tiny_llama(
    vocab_size: int,
    *,
    hidden_size: int,
    layers: int,
    heads: int,
    intermediate_size: int | None = None,
    max_positions: int = 64,
    seed: int = 0,
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


@takes(TinyOptions)
def make_tiny_student(
    alphabet: Iterable[str],
    *,
    seed: int = 0,
    mode: Mode,
    hidden_size: int,
    layers: int,
    heads: int,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    cooldown: float,
    **train_kwargs: Any,
) -> HFStudent:
    """A tiny Llama student whose vocabulary is exactly ``alphabet``.

    The defaults (2 layers, width 128, 8 heads, AdamW at 4e-3 with batch 128,
    a 300-step warm-up, inverse-square-root decay and a cool-down over the
    last 30% of the episode's budget) are the ones the README's default
    experiment measures. The long warm-up is there because a small
    transformer sits on a loss plateau on arithmetic before it learns where
    the digits are, and a rate that decays too early keeps it there; the
    cool-down is there so that the student the episode ends with is a
    converged one, not a snapshot of a high-rate oscillation.
    """
    tokenizer = build_char_tokenizer(alphabet)
    model = tiny_llama(
        len(tokenizer), hidden_size=hidden_size, layers=layers, heads=heads, seed=seed
    )
    return HFStudent(
        model,
        tokenizer,
        mode=mode,
        seed=seed,
        lr=lr,
        batch_size=batch_size,
        warmup_steps=warmup_steps,
        cooldown=cooldown,
        **train_kwargs,
    )


@takes(TinyOptions)
def tiny_student_for_task(task: Any, seed: int = 0, **kwargs: Any) -> HFStudent:
    """Registry factory for ``student: tiny``: the vocabulary is the task's alphabet."""
    alphabet = TaskCapabilities.of(task).require("alphabet", "the tiny student")
    # Decode no further than the longest answer (plus its eos), and stop where
    # the task says: the same rule as every pretrained student's.
    return make_tiny_student(alphabet, seed=seed, **task_generation_defaults(task, kwargs))


#: What the factory needs of a task (checked by the assembly before anything is built).
tiny_student_for_task.requires = ("alphabet",)  # type: ignore[attr-defined]
