"""The LoRA adapters a vLLM evaluation engine serves: ids that never repeat, private
snapshots, fingerprints and ranks.

vLLM caches adapters by ``lora_int_id``: a request that reuses an id is served
with whatever adapter was loaded under it first, even when the path now holds
new weights. So every different adapter gets a fresh id from a counter that
only goes up (also across ``state_dict``/``load_state_dict``), the same bytes
evaluated twice keep their id, and each id is served from a private snapshot of
the adapter (see :mod:`teachgym.students.vllm_eval`). Pure: imports neither vLLM
nor torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Files of a peft adapter directory that determine its weights (what a fingerprint reads).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
#: Name prefix of the adapters this module registers; the id makes each name unique,
#: which matters because vLLM's prefix-cache keys hold the adapter's name and path.
ADAPTER_NAME_PREFIX = "teachgym-lora-"


# -- pure helpers: no vLLM, no torch ----------------------------------------------------------
class LoraIdAllocator:
    """Hands out ``lora_int_id`` values that are never reused by one engine.

    vLLM keys its adapter cache by this integer alone, so an id that comes back
    for new weights silently serves the old ones. The counter only goes up:
    :meth:`load_state_dict` takes the larger of the saved and the current value,
    so restoring an older checkpoint into a live evaluator (whose engine still
    caches the ids handed out since) cannot rewind it.

    >>> ids = LoraIdAllocator()
    >>> [ids.allocate() for _ in range(3)]
    [1, 2, 3]
    >>> saved = ids.state_dict()
    >>> ids.allocate()
    4
    >>> ids.load_state_dict(saved)  # an older state: the counter does not go back
    >>> ids.allocate()
    5
    """

    def __init__(self, start: int = 1) -> None:
        if isinstance(start, bool) or not isinstance(start, int) or start < 1:
            raise ValueError(f"lora ids start at an integer >= 1 (vLLM rejects 0), got {start!r}")
        self._next = start

    @property
    def next_id(self) -> int:
        """The id the next :meth:`allocate` returns."""
        return self._next

    def allocate(self) -> int:
        """A fresh id, larger than every id handed out before."""
        value = self._next
        self._next += 1
        return value

    def state_dict(self) -> dict[str, int]:
        """What resuming needs: the next id (JSON-serialisable)."""
        return {"next_lora_id": self._next}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after ``state``, but never below ids this allocator already gave out."""
        saved = state.get("next_lora_id")
        if isinstance(saved, bool) or not isinstance(saved, int) or saved < 1:
            raise ValueError(f"next_lora_id must be an integer >= 1, got {saved!r}")
        self._next = max(self._next, saved)


def adapter_fingerprint(adapter_dir: str | Path) -> str:
    """SHA-256 over the adapter's config and weight files: equal bytes, equal fingerprint.

    What decides whether an adapter needs a new id is its content, not its
    path: a student usually saves every step's adapter to the same directory.
    A directory with neither weight file is an error here rather than a
    confusing failure inside the engine.
    """
    folder = Path(adapter_dir)
    present = [name for name in ADAPTER_FILES if (folder / name).is_file()]
    if "adapter_config.json" not in present or len(present) < 2:
        raise FileNotFoundError(
            f"{folder} is not a peft adapter directory (expected adapter_config.json and "
            f"adapter_model.safetensors); found {sorted(p.name for p in folder.glob('*'))[:8]}"
        )
    digest = hashlib.sha256()
    for name in present:
        digest.update(name.encode())
        with open(folder / name, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def adapter_rank(adapter_dir: str | Path) -> int:
    """The LoRA rank ``r`` in an adapter's config (the engine's ``max_lora_rank`` bounds it)."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return int(config.get("r", 0))


def lora_request_kwargs(lora_id: int, path: str | Path) -> dict[str, Any]:
    """``LoRARequest`` arguments: a name unique to the id (prefix-cache keys hold the name)."""
    if isinstance(lora_id, bool) or not isinstance(lora_id, int) or lora_id < 1:
        raise ValueError(f"lora_int_id must be an integer >= 1, got {lora_id!r}")
    return {
        "lora_name": f"{ADAPTER_NAME_PREFIX}{lora_id}",
        "lora_int_id": lora_id,
        "lora_path": str(path),
    }


class AdapterRegistry:
    """Which ``lora_int_id`` serves which adapter bytes; pure bookkeeping, no engine.

    :meth:`register` fingerprints an adapter directory: bytes seen before (and
    still kept) keep their id, anything else gets a fresh id and a private
    snapshot copy under ``root`` (a few MB for a LoRA adapter), so the path an
    id points to never changes content. Past ``keep`` adapters the least
    recently used is forgotten and its id returned for unloading; if those
    bytes come back they get a new id, never the old one.

    >>> import tempfile, pathlib
    >>> src = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (src / "adapter_config.json").write_text('{"r": 8}')
    >>> _ = (src / "adapter_model.safetensors").write_bytes(b"v1")
    >>> reg = AdapterRegistry(tempfile.mkdtemp(), keep=4)
    >>> reg.register(src)[0], reg.register(src)[0]  # same bytes, same id
    (1, 1)
    >>> _ = (src / "adapter_model.safetensors").write_bytes(b"v2")  # retrained in place
    >>> reg.register(src)[0]
    2
    """

    def __init__(self, root: str | Path, keep: int = 8, ids: LoraIdAllocator | None = None) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
        self.root = Path(root)
        self.keep = keep
        self.ids = ids if ids is not None else LoraIdAllocator()
        self._by_fingerprint: OrderedDict[str, tuple[int, Path]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_fingerprint)

    def register(self, adapter_dir: str | Path) -> tuple[int, Path, list[int]]:
        """``(lora_int_id, snapshot_dir, evicted_ids)`` for the adapter now in ``adapter_dir``."""
        key = adapter_fingerprint(adapter_dir)
        known = self._by_fingerprint.get(key)
        if known is not None:
            self._by_fingerprint.move_to_end(key)
            return known[0], known[1], []
        lora_id = self.ids.allocate()
        snapshot = self.root / str(lora_id)
        snapshot.mkdir(parents=True)
        for name in ADAPTER_FILES:
            if (Path(adapter_dir) / name).is_file():
                shutil.copy2(Path(adapter_dir) / name, snapshot / name)
        if adapter_fingerprint(snapshot) != key:  # overwritten while we copied
            shutil.rmtree(snapshot, ignore_errors=True)
            raise RuntimeError(f"the adapter in {adapter_dir} changed while it was being read")
        self._by_fingerprint[key] = (lora_id, snapshot)
        evicted = []
        while len(self._by_fingerprint) > self.keep:
            _, (old_id, old_snapshot) = self._by_fingerprint.popitem(last=False)
            shutil.rmtree(old_snapshot, ignore_errors=True)
            evicted.append(old_id)
        return lora_id, snapshot, evicted


#: The ``max_lora_rank`` values vLLM accepts (``vllm.config.lora.MaxLoRARanks``, 0.32).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds adapters of rank ``rank``.

    >>> engine_lora_rank(8), engine_lora_rank(12), engine_lora_rank(4)
    (8, 16, 8)
    """
    for allowed in LORA_RANKS[1:]:  # 1 only for rank-1 adapters, and 8 costs nothing more
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {LORA_RANKS[-1]}")
