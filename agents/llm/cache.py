"""An on-disk cache of successful replies, so a rerun sends only what it has not got yet.

The key covers everything that shapes a reply (model, messages, sampling, schema), so
a changed temperature or response model never reuses an old reply. Only successful
replies are stored: a failure is worth trying again on the next run. One file per key,
written to a temporary name and renamed, so a crash or a concurrent writer never leaves
a half-written entry that a later run would read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from teachgym.agents.llm.types import RawReply, Sampling

#: Bumped when the key's recipe or the entry's layout changes, so old entries just miss.
CACHE_VERSION = 1


def cache_key(
    model: str,
    messages: Sequence[dict[str, str]],
    sampling: Sampling,
    schema: dict[str, Any] | None,
) -> str:
    """A sha256 over a canonical JSON of the request, stable across processes and runs."""
    payload = {
        "v": CACHE_VERSION,
        "model": model,
        "messages": list(messages),
        "sampling": dataclasses.asdict(sampling),
        "schema": schema,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplyCache:
    """Replies stored as ``root/<first two hex digits>/<key>.json`` (sharded so that no
    directory grows to hundreds of thousands of entries)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> RawReply | None:
        """The stored reply, or None; an unreadable entry is a miss, not an error."""
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            return RawReply(
                text=data["text"],
                finish_reason=data.get("finish_reason"),
                prompt_tokens=int(data.get("prompt_tokens", 0)),
                completion_tokens=int(data.get("completion_tokens", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, reply: RawReply) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(dataclasses.asdict(reply), fh, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
