"""Where a dataset task's rows come from and how they are split: the source files
(:func:`find_sources`, :func:`read_jsonl`), the :class:`Row` a task reads from
each, and the val/test/train-pool split (:func:`split_items`).

The split rules are documented once, in :mod:`teachgym.envs.tasks.dataset`,
which re-exports :class:`Row`, :func:`find_sources` and :func:`read_jsonl`.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from teachgym.types import normalize_prompt

_SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class Row:
    """One source row as the task reads it (what a subclass's
    :meth:`~teachgym.envs.tasks.dataset.DatasetTask.parse_row` returns).

    ``answer`` is what a model should write (the gold solution text), so a
    sampled problem can serve as a training example as it is; ``metadata``
    keeps what scoring needs (the final answer) and anything worth showing.
    """

    prompt: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)
    gold_skill: str | None = None


def _expand(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))


def find_sources(path: str | os.PathLike[str]) -> dict[str, Path]:
    """The files under ``path``: ``{"train": ..., "test": ...}``, or ``{"pool": ...}``.

    Accepted: a ``.jsonl``/``.jsonl.gz`` file (one source: ``pool``); a
    directory holding ``train.jsonl`` and ``test.jsonl`` (either may be
    gzipped); a directory holding exactly one of them, or exactly one other
    JSONL file (one source). ``~`` and environment variables are expanded.
    """
    p = _expand(path)
    if not p.exists():
        raise ValueError(f"dataset path {str(path)!r} (resolved to {str(p)!r}) does not exist")
    if p.is_file():
        if not p.name.endswith(_SUFFIXES):
            raise ValueError(f"dataset file {str(p)!r} must end with .jsonl or .jsonl.gz")
        return {"pool": p}
    found: dict[str, Path] = {}
    for split in ("train", "test"):
        for suffix in _SUFFIXES:
            if (p / f"{split}{suffix}").is_file():
                found[split] = p / f"{split}{suffix}"
                break
    if len(found) == 2:
        return found
    if len(found) == 1:
        return {"pool": next(iter(found.values()))}
    others = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(_SUFFIXES))
    if len(others) == 1:
        return {"pool": others[0]}
    raise ValueError(
        f"dataset directory {str(p)!r} holds no train.jsonl/test.jsonl (optionally .gz) "
        f"and not exactly one other .jsonl file (found {[f.name for f in others]})"
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file (gzipped when it ends with ``.gz``); blank lines skipped."""
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    rows: list[dict[str, Any]] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Item:
    """A row with its id: the train pool keeps these and builds Problems only when sampled."""

    id: str
    row: Row


def draw_indices(items: list[Item], k: int, rng: np.random.Generator, what: str) -> list[int]:
    """``k`` distinct indices into ``items``, sorted; an error names ``what`` when too few."""
    if k > len(items):
        raise ValueError(f"{what} is {k} but only {len(items)} rows are available")
    return sorted(rng.choice(len(items), size=k, replace=False).tolist())


def split_items(
    sources: dict[str, list[Item]],
    val_size: int,
    test_size: int | None,
    rng: np.random.Generator,
    *,
    task: str,
) -> tuple[list[Item], list[Item], list[Item]]:
    """(val, test, train pool), disjoint by normalised prompt: the rules in
    :mod:`teachgym.envs.tasks.dataset`'s docstring. ``sources`` is ``train``+``test``
    or ``pool``; ``task`` names the task in errors."""
    if "pool" in sources:
        if test_size is None:
            raise ValueError(
                f"task {task!r} was given a single source; set test_size to carve a "
                "test split from it"
            )
        seen: set[str] = set()
        pool: list[Item] = []
        for it in sources["pool"]:
            key = normalize_prompt(it.row.prompt)
            if key not in seen:
                seen.add(key)
                pool.append(it)
        if val_size + test_size > len(pool):
            raise ValueError(
                f"val_size + test_size is {val_size + test_size} but the single source has "
                f"only {len(pool)} distinct rows"
            )
        order = rng.permutation(len(pool)).tolist()
        test_idx = sorted(order[:test_size])
        val_idx = sorted(order[test_size : test_size + val_size])
        rest = sorted(order[test_size + val_size :])
        return [pool[i] for i in val_idx], [pool[i] for i in test_idx], [pool[i] for i in rest]

    test_all = sources["test"]
    test_keys = {normalize_prompt(it.row.prompt) for it in test_all}
    if test_size is None:
        test = list(test_all)
    else:
        test = [test_all[i] for i in draw_indices(test_all, test_size, rng, "test_size")]
    train = [it for it in sources["train"] if normalize_prompt(it.row.prompt) not in test_keys]
    val_idx = draw_indices(train, val_size, rng, "val_size")
    val = [train[i] for i in val_idx]
    val_keys = {normalize_prompt(it.row.prompt) for it in val}
    chosen = set(val_idx)
    rest = [
        it
        for i, it in enumerate(train)
        if i not in chosen and normalize_prompt(it.row.prompt) not in val_keys
    ]
    return val, test, rest
