"""The rows of a training batch: padding, packing, and the cut into micro-batches.

Pure functions of the encoded examples, shared by every student that trains
(:class:`~teachgym.students.training.Trainer`, the population): the same
examples give the same rows, so two students given the same data see the
same loss. :func:`batch_tensors` lays a batch out (one padded row per example,
or examples packed end to end behind a block-diagonal mask);
:func:`micro_batches` cuts an optimizer batch into pieces whose weighted
gradients sum to the batch's, and :func:`batch_cost` is the token count that
cut budgets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from teachgym.students.encoding import Encoded, labelled

__all__ = ["accumulation_chunks", "batch_cost", "batch_tensors", "micro_batches"]


def accumulation_chunks(
    batch: Sequence[Encoded], steps: int
) -> list[tuple[Sequence[Encoded], float]]:
    """``batch`` cut into at most ``steps`` micro-batches, each with its loss weight.

    A micro-batch's mean loss is weighted by its share of the batch's labelled
    tokens, so the summed gradient is the full batch's gradient. Micro-batches
    without a labelled token are left out. (:func:`micro_batches` without a
    token budget.)
    """
    return micro_batches(batch, steps)


def batch_cost(batch: Sequence[Encoded], packed: bool, pack_width: int) -> int:
    """Tokens one forward pass over ``batch`` holds: its rows times their width.

    Padded: one row per example, as wide as the longest. Packed: the rows
    :func:`batch_tensors` lays the examples into (next-fit in batch order),
    as wide as the fullest row.
    """
    if not packed:
        return len(batch) * max(len(ids) for ids, _ in batch)
    groups = _pack_groups(batch, pack_width)
    return len(groups) * max(sum(len(ids) for ids, _ in g) for g in groups)


def micro_batches(
    batch: Sequence[Encoded],
    steps: int,
    max_tokens: int | None = None,
    *,
    packed: bool = False,
    pack_width: int = 64,
) -> list[tuple[Sequence[Encoded], float]]:
    """``batch`` cut into micro-batches, each with its loss weight.

    First into at most ``steps`` chunks of equal size (``grad_accum_steps``,
    see :func:`accumulation_chunks`), then each chunk, in order, into runs
    whose :func:`batch_cost` is at most ``max_tokens`` (an example that alone
    costs more runs on its own: examples are never cut). The weights are the
    micro-batches' shares of the batch's labelled tokens, so the summed
    gradient is the full batch's, whatever the cut.
    """
    size = math.ceil(len(batch) / steps)
    chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
    if max_tokens is not None:
        chunks = [run for c in chunks for run in _token_runs(c, max_tokens, packed, pack_width)]
    total = sum(labelled(item) for item in batch)
    weighted = [(c, sum(labelled(item) for item in c) / max(1, total)) for c in chunks]
    return [(c, share) for c, share in weighted if share != 0]


def _token_runs(
    chunk: Sequence[Encoded], max_tokens: int, packed: bool, pack_width: int
) -> list[Sequence[Encoded]]:
    """Consecutive runs of ``chunk``, each as long as fits in ``max_tokens``."""
    runs: list[Sequence[Encoded]] = []
    start = 0
    for end in range(1, len(chunk) + 1):
        if end - start > 1 and batch_cost(chunk[start:end], packed, pack_width) > max_tokens:
            runs.append(chunk[start : end - 1])
            start = end - 1
    runs.append(chunk[start:])
    return runs


def batch_tensors(
    batch: Sequence[Encoded],
    packed: bool,
    *,
    pad_token_id: int,
    pack_width: int,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Model inputs for one optimizer step: ``input_ids``, ``labels`` and masks.

    ``labels`` are -100 (ignored) on prompt tokens and padding, so only the
    completion and its eos carry loss. Padded: one right-padded row per
    example. Packed: examples laid end to end in rows of ``pack_width``
    tokens, a 4D additive mask (in ``dtype``, the model's) that lets each
    token see only earlier tokens of its own example, and positions restarting
    at 0 for each example.
    """
    if not packed:
        return _padded_tensors(batch, pad_token_id)
    return _packed_tensors(_pack_groups(batch, pack_width), pad_token_id, dtype)


def _padded_tensors(batch: Sequence[Encoded], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    rows = [ids + [pad] * (width - len(ids)) for ids, _ in batch]
    labels = [[-100] * start + ids[start:] + [-100] * (width - len(ids)) for ids, start in batch]
    attn = [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch]
    return {
        "input_ids": torch.tensor(rows, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(attn, dtype=torch.long),
    }


def _pack_groups(batch: Sequence[Encoded], pack_width: int) -> list[list[Encoded]]:
    """Next-fit in batch order into rows of ``pack_width`` (or the longest example)."""
    width = max(pack_width, max(len(ids) for ids, _ in batch))
    groups: list[list[Encoded]] = [[]]
    used = 0
    for item in batch:
        if used + len(item[0]) > width:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += len(item[0])
    return groups


def _packed_tensors(
    groups: list[list[Encoded]], pad: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
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
    mask = torch.zeros(len(groups), 1, width, width, dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return {
        "input_ids": torch.tensor(rows, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": mask,
        "position_ids": torch.tensor(positions, dtype=torch.long),
    }
