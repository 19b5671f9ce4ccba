"""A generator in a Ray actor, and the proxy that makes it look local.

The generator is built inside the actor from the config's names, with its
own copy of the task (tasks are deterministic given their arguments), so an
LLM generator's engine or client lives where its GPU or network is. The
driver's :class:`~teachgym.agents.generators.base.GenerationContext` travels
without the task; its random generator travels too and its advanced state
comes back, so the step's later generation rounds draw exactly what they
would have drawn in-process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from teachgym.agents.generators.base import (
    GenerationContext,
    Plan,
    ReportsShortfall,
    ReportsStats,
)
from teachgym.types import Example

__all__ = ["GeneratorProxy", "GeneratorWorker"]


class GeneratorWorker:
    """Builds and serves one generator inside a Ray actor.

    ``build(config, threads)`` (the assembly's builder) runs once in the actor
    and returns the task and the generator.
    """

    def __init__(
        self,
        build: Callable[[dict[str, Any], int], tuple[Any, Any]],
        config: dict[str, Any],
        threads: int,
    ) -> None:
        self.task, self.generator = build(config, threads)
        self.threads = threads

    def ready(self) -> dict[str, Any]:
        import ray

        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "name": self.generator.name,
            "has_take_stats": isinstance(self.generator, ReportsStats),
            "shortfall_reasons": sorted(
                self.generator.shortfall_reasons
                if isinstance(self.generator, ReportsShortfall)
                else ()
            ),
        }

    def take_stats(self) -> dict[str, Any] | None:
        """The generator's per-step counters (an LLM generator's client stats), if it keeps any."""
        return self.generator.take_stats() if isinstance(self.generator, ReportsStats) else None

    def generate(
        self, plan: Plan, context: GenerationContext
    ) -> tuple[list[Example], dict[str, int], dict[str, Any]]:
        context = dataclasses.replace(context, task=self.task)
        examples, rejected = self.generator.generate(plan, context)
        return list(examples), dict(rejected), context.rng.bit_generator.state


class GeneratorProxy:
    """The ``Generator`` protocol, served by a :class:`GeneratorWorker` actor."""

    def __init__(self, actor: Any) -> None:
        import ray

        self._ray = ray
        self.actor = actor
        self.worker_info = ray.get(actor.ready.remote())
        self.name = str(self.worker_info["name"])
        self.shortfall_reasons = frozenset(self.worker_info.get("shortfall_reasons", ()))
        if self.worker_info.get("has_take_stats"):
            # Only then: the env looks for ``take_stats`` to decide whether to report stats.
            self.take_stats = self._take_stats

    def _take_stats(self) -> dict[str, Any]:
        """The remote generator's ``take_stats()`` (the counters live in the actor)."""
        return dict(self._ray.get(self.actor.take_stats.remote()) or {})

    def generate(
        self, plan: Plan, context: GenerationContext
    ) -> tuple[list[Example], Mapping[str, int]]:
        remote_context = dataclasses.replace(context, task=None)
        examples, rejected, rng_state = self._ray.get(
            self.actor.generate.remote(plan, remote_context)
        )
        context.rng.bit_generator.state = rng_state  # the draws happened over there
        return examples, rejected
