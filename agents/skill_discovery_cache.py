"""The skill discovery's result (:class:`SkillDiscovery`) and its cache file: the key that
names a discovery, reading a stored result back and writing a new one.

See :mod:`teachgym.agents.skill_discovery` for what is cached and when: one JSON file per
key, never a result in which a request failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teachgym.types import Problem

# The discovery's own logger: its cache messages read as they did when they lived there.
log = logging.getLogger("teachgym.agents.skill_discovery")

#: Bumped when the cache's key recipe or file layout changes, so old files just miss.
CACHE_VERSION = 1

_VALID_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class SkillDiscovery:
    """What a discovery found: ``mapping`` (problem id -> category), ``categories``
    (category -> the stage-1 skill names it groups, only categories with problems) and
    ``stats`` (requests sent, failures by reason, fallback count, cache use, ...)."""

    mapping: dict[str, str]
    categories: dict[str, list[str]]
    stats: dict[str, Any]


def discovery_key(
    problems: Sequence[Problem],
    *,
    dataset: str,
    model: str | None,
    max_skills: int,
    prompt_text: str,
    seed: int = 0,
    batch_size: int = 20,
    max_rounds: int = 3,
) -> str:
    """sha256 over everything that shapes the result, stable across processes and runs."""
    payload = {
        "v": CACHE_VERSION,
        "dataset": dataset,
        "model": model,
        "problems": [[p.id, p.prompt] for p in problems],
        "max_skills": max_skills,
        "batch_size": batch_size,
        "max_rounds": max_rounds,
        "seed": seed,
        "prompts": prompt_text,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def read_cache(path: Path, key: str, problems: Sequence[Problem]) -> SkillDiscovery | None:
    """The stored result, or None when absent, unreadable or not for these problems."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        mapping = {str(k): str(v) for k, v in data["mapping"].items()}
        categories = {str(k): [str(m) for m in v] for k, v in data["categories"].items()}
        stats = dict(data["stats"])
        stored_key = data["key"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("skill discovery cache %s unreadable (%s); discovering again", path, err)
        return None
    ids = {p.id for p in problems}
    if (
        stored_key != key
        or set(mapping) != ids
        or not set(mapping.values()) <= set(categories)
        or not all(_VALID_NAME.match(c) for c in categories)
    ):
        log.warning("skill discovery cache %s does not fit this call; discovering again", path)
        return None
    stats["discovery_requests"] = stats.get("requests", 0)
    stats.update(requests=0, cached_replies=0, cache="hit", cache_file=str(path))
    return SkillDiscovery(mapping=mapping, categories=categories, stats=stats)


def write_cache(
    path: Path, key: str, result: SkillDiscovery, *, dataset: str, model: str | None
) -> None:
    """Written to a temporary name and renamed, so a crash or a concurrent writer never
    leaves a half-written file that a later call would read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = {k: v for k, v in result.stats.items() if k not in ("cache", "cache_file")}
    payload = {
        "version": CACHE_VERSION,
        "key": key,
        "dataset": dataset,
        "model": model,
        "categories": result.categories,
        "mapping": result.mapping,
        "stats": stats,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_result(
    result: SkillDiscovery, path: Path | None, key: str, *, dataset: str, model: str | None
) -> None:
    """Write ``result`` to ``path`` (``None``: no cache) unless one of its requests failed
    (a failed request deserves another try); ``stats["cache"]`` says which (``off``,
    ``skipped`` or ``written``) and ``stats["cache_file"]`` the file written."""
    result.stats["cache"] = "off"
    result.stats["cache_file"] = None
    if path is not None:
        if result.stats["failed"]:
            result.stats["cache"] = "skipped"  # a failed request deserves another try
        else:
            write_cache(path, key, result, dataset=dataset, model=model)
            result.stats["cache"] = "written"
            result.stats["cache_file"] = str(path)
