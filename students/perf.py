"""A student's throughput and peak memory since the last report (``take_perf``).

What :class:`~teachgym.students.base.ReportsPerf` students measure: tokens per
second of training and of evaluation, and the peak device memory. These vary
run to run, so they go to the run directory's ``perf.jsonl``, never to
``steps.jsonl``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["PerfCounters"]


class PerfCounters:
    """Tokens and seconds of training and evaluation since the last :meth:`take`."""

    def __init__(self) -> None:
        self.tokens: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, tokens: float, seconds: float) -> None:
        self.tokens[phase] = self.tokens.get(phase, 0.0) + tokens
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def take(self, device: torch.device) -> dict[str, Any]:
        """``<phase>_tokens_per_s`` for each phase with time measured, and on a CUDA
        ``device`` its ``peak_memory_mib`` (CUDA's peak allocated memory, whose
        counter this resets); then the counters start again from zero."""
        rates: dict[str, Any] = {
            f"{phase}_tokens_per_s": self.tokens[phase] / seconds
            for phase, seconds in self.seconds.items()
            if seconds > 0
        }
        self.tokens, self.seconds = {}, {}
        if device.type == "cuda":
            rates["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        return rates
