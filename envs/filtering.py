"""Checks every generated example passes before the student sees it.

They live in the environment, not in generators, so that a user's own
generator gets the same guarantees: no evaluation item leaks into training
(decontamination by normalized prompt), no prompt appears twice in a step (or,
with ``dedup="episode"``, twice in an episode), and nothing reaches the
tokenizer that it cannot encode.

Deduplication is per step by default because procedural skills can have small
problem spaces (2-digit x 1-digit multiplication has 720 prompts): an
episode-wide rule would starve such a skill after a few hundred examples,
while a per-step rule still stops a generator from padding a batch with copies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence

from teachgym.types import Example, normalize_prompt


class ExampleFilter:
    """Stateful per episode when ``dedup="episode"``: remembers accepted prompts."""

    def __init__(
        self, eval_prompts: Iterable[str], alphabet: str | None = None, dedup: str = "step"
    ) -> None:
        if dedup not in ("step", "episode"):
            raise ValueError(f"dedup must be 'step' or 'episode', got {dedup!r}")
        self._eval = {normalize_prompt(p) for p in eval_prompts}
        self._alphabet = set(alphabet) if alphabet else None
        self.dedup = dedup
        self.seen: set[str] = set()

    def __call__(
        self,
        examples: Sequence[Example],
        skills: Collection[str],
        cap: int,
        batch: set[str] | None = None,
    ) -> tuple[list[Example], dict[str, Counter[str]]]:
        """Accepted examples (at most ``cap``) and, per skill, rejection counts by reason.

        ``batch`` holds the normalized prompts already accepted in this step
        (by an earlier generation round); accepted prompts are added to it.
        Does not mutate ``seen``; call :meth:`commit` once the step is kept, so
        a failure later in the step leaves the filter as it was.
        """
        rejected: dict[str, Counter[str]] = {}
        accepted: list[Example] = []
        batch = set() if batch is None else batch
        for ex in examples:
            if len(accepted) >= cap:
                reason = "over_budget"
            elif ex.skill not in skills:
                reason = "unknown_skill"
            elif (
                self._alphabet is not None and not set(ex.prompt + ex.completion) <= self._alphabet
            ):
                reason = "bad_characters"
            else:
                key = normalize_prompt(ex.prompt)
                if key in self._eval:
                    reason = "contaminated"
                elif key in self.seen or key in batch:
                    reason = "duplicate"
                else:
                    batch.add(key)
                    accepted.append(ex)
                    continue
            rejected.setdefault(ex.skill, Counter())[reason] += 1
        return accepted, rejected

    def excluded(self, batch: set[str]) -> frozenset[str]:
        """Every normalized prompt that would be rejected as contaminated or a duplicate
        now, given the prompts ``batch`` already accepted this step."""
        return frozenset(self._eval | self.seen | batch)

    def commit(self, accepted: Iterable[Example]) -> None:
        if self.dedup == "episode":
            self.seen.update(normalize_prompt(e.prompt) for e in accepted)
