"""The Ray worker setup hook, run in this process (no Ray needed)."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import pytest

from teachgym.distributed import RAY_CHATTER, quiet_worker_logs


def test_worker_hook_drops_the_sigterm_exit_and_keeps_other_unraisables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    for name in RAY_CHATTER:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    quiet_worker_logs()
    assert all(logging.getLogger(n).level == logging.WARNING for n in RAY_CHATTER)

    def unraisable(exc: BaseException) -> Any:
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None)

    sys.unraisablehook(unraisable(SystemExit(1)))  # Ray's SIGTERM exit: dropped
    assert seen == []
    real = unraisable(RuntimeError("a real problem"))
    sys.unraisablehook(real)
    assert seen == [real]
