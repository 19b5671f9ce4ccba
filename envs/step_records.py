"""The records of one env step: its data accounting, phase timings and the report rows.

:class:`StepData` (what a step's generation rounds made, accepted and
rejected), :class:`PendingStep` (a step between its two halves),
:class:`Timings` and :class:`Perf` (the ``info`` mappings that compare by
their keys) and :func:`report_dict` (a report's per-skill rows in ``info``).
:class:`~teachgym.envs.base.TeacherEnv` builds them; :mod:`teachgym.envs.base`
re-exports the public ones.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from teachgym.agents.generators.base import Plan
from teachgym.types import Allocation, EvalReport, Example


@contextlib.contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Adds the wall time of the ``with`` block to ``timings[phase]``."""
    t0 = time.perf_counter()
    yield
    timings[phase] = time.perf_counter() - t0


class Timings(Mapping[str, float]):
    """Seconds spent per phase of a step: a read-only mapping.

    Two ``Timings`` compare equal when they time the same phases, whatever the
    seconds: wall-clock time is a measurement, not an outcome, and
    gymnasium's ``check_env`` compares ``info`` dicts across identical steps to
    verify that outcomes are deterministic.
    """

    def __init__(self, seconds: Mapping[str, float]) -> None:
        self._seconds = dict(seconds)

    def __getitem__(self, key: str) -> float:
        return self._seconds[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._seconds)

    def __len__(self) -> int:
        return len(self._seconds)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timings) and set(self) == set(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Timings({self._seconds!r})"


class Perf(Timings):
    """A student's measurements over a step (tokens per second, peak memory).

    Like :class:`Timings`, two compare equal when they measure the same
    things, whatever the values: they vary run to run.
    """

    def __repr__(self) -> str:
        return f"Perf({dict(self)!r})"


@dataclass
class PendingStep:
    """A step between :meth:`TeacherEnv.begin_step` and :meth:`TeacherEnv.end_step`:
    the clamped plan, its data, the phase timings so far, the generator's LLM counters."""

    plan: Plan
    data: StepData
    timings: dict[str, float]
    llm_stats: dict[str, Any] | None = None


class StepData:
    """What one step's generation rounds made, and an accounting that adds up.

    Per skill (``by_skill``): ``made`` (every round), ``accepted`` (= paid for),
    ``rejected`` (made and dropped by the env's filter, by reason), and for a
    count plan ``requested`` (after clamping) and ``unmade``: what the
    generator was asked for in the skill's last round and did not make, so
    ``requested - accepted = unmade + what the filter dropped in that round``.

    ``rejected_totals`` sums the filter's reasons over skills and adds the
    generator's own. A generator reason that means "could not make this
    many" (its ``shortfall_reasons``, e.g. ``space_exhausted``) is counted
    from the last round only: the env asks again for the same missing
    examples each round, and counting every round would count one missing
    example once per round. Other generator reasons are events (a reply that
    did not parse) and are summed.
    """

    def __init__(self, requested: dict[str, int] | None, shortfall_reasons: frozenset[str]) -> None:
        self.requested = requested
        self.shortfall_reasons = shortfall_reasons
        self.examples: list[Example] = []
        self.accepted: list[Example] = []
        self.filtered: dict[str, Counter[str]] = {}
        self.events: Counter[str] = Counter()
        self.shortfall: Counter[str] = Counter()
        self.unmade: dict[str, int] = {}

    def add_round(
        self,
        plan: Plan,
        made: Sequence[Example],
        accepted: Sequence[Example],
        filtered: Mapping[str, Counter[str]],
        generator_rejected: Mapping[str, int],
    ) -> None:
        self.examples += made
        self.accepted += accepted
        for skill, counts in filtered.items():
            self.filtered.setdefault(skill, Counter()).update(counts)
        rejected = Counter(dict(generator_rejected))
        self.shortfall = Counter({k: n for k, n in rejected.items() if k in self.shortfall_reasons})
        self.events.update({k: n for k, n in rejected.items() if k not in self.shortfall_reasons})
        if isinstance(plan, Allocation):
            made_n = Counter(e.skill for e in made)
            for skill, asked in plan.counts.items():
                if asked > 0:
                    self.unmade[skill] = max(0, asked - made_n[skill])

    def rejected_totals(self) -> dict[str, int]:
        """Reason -> count over the whole step (filter and generator)."""
        total: Counter[str] = Counter(self.events)
        total.update(self.shortfall)
        for counts in self.filtered.values():
            total.update(counts)
        return dict(sorted((k, v) for k, v in total.items() if v))

    def by_skill(self) -> dict[str, dict[str, Any]]:
        """Per skill: made, accepted, rejected by reason (and requested, unmade)."""
        made_n = Counter(e.skill for e in self.examples)
        accepted_n = Counter(e.skill for e in self.accepted)
        skills = set(made_n) | (
            {k for k, n in self.requested.items() if n > 0} if self.requested else set()
        )
        out: dict[str, dict[str, Any]] = {}
        for skill in sorted(skills):
            row: dict[str, Any] = {
                "made": made_n[skill],
                "accepted": accepted_n[skill],
                "rejected": dict(sorted(self.filtered.get(skill, Counter()).items())),
            }
            if self.requested is not None:
                row["requested"] = self.requested.get(skill, 0)
                row["unmade"] = self.unmade.get(skill, 0)
            out[skill] = row
        return out


def report_dict(report: EvalReport) -> dict[str, dict[str, float]]:
    return {
        s: {"accuracy": st.accuracy, "correct": st.correct, "total": st.total}
        for s, st in report.skills.items()
    }
