"""Process-level settings that only a process owner should touch.

Torch's thread pool is process-wide, so no component sets it on its own: the
runner sets it once from the config's ``threads`` (and records the number in
the run's resolved config, since a different count gives different floats),
and a Ray worker sets it from the CPUs it was given.
"""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np
import torch


def default_threads() -> int:
    """Threads for CPU torch when the config leaves ``threads`` unset: every core, at most 8.

    More threads than cores makes small matmuls slower, and more than 8 rarely
    helps a model of the tiny student's size.
    """
    return max(1, min(os.cpu_count() or 1, 8))


def set_torch_threads(threads: int) -> None:
    """Set torch's intra-op thread count (process-wide)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators.

    teachgym's own components draw from generators they own; this is for user
    components that use the global ones, and it runs before any component is
    built so that their construction is seeded too.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cuda_available() -> bool:
    """Is there a CUDA GPU for torch here?"""
    return bool(torch.cuda.is_available())


def cache_root() -> Path:
    """Where teachgym caches what it made once (a converted checkpoint, discovered skills):
    ``$TEACHGYM_CACHE``, or ``~/.cache/teachgym`` without it."""
    root = os.environ.get("TEACHGYM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "teachgym"


def cpu_name() -> str:
    """The CPU model, for records of where a number was measured."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_fingerprint(threads: int) -> dict[str, object]:
    """What decides the floats of a CPU run besides the config: CPU, threads, torch."""
    return {"cpu": cpu_name(), "threads": threads, "torch": str(torch.__version__)}
