"""Shared data types that cross component boundaries.

Every object that moves between the teacher, the generator, the student and the
task is one of these frozen pydantic models. Freezing them means a generator
cannot mutate an example after the environment has checked it, and validating
them at construction means a bad value fails where it is made, with an error
that names the field and the offending value, instead of deep inside training.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Allocation",
    "ErrorCase",
    "EvalReport",
    "Example",
    "Prediction",
    "Problem",
    "Provenance",
    "SkillStats",
    "TextPlan",
    "TreeAction",
    "normalize_prompt",
]

_SKILL_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def normalize_prompt(text: str) -> str:
    """The key under which two prompts count as the same problem.

    Case and whitespace differences do not make a generated example new, so
    deduplication and decontamination compare this form, not the raw text.
    """
    return " ".join(text.lower().split())


def _digest(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


class Problem(_Frozen):
    """One evaluation item: what the student sees and the gold answer."""

    id: str = Field(min_length=1)
    skill: str = Field(pattern=_SKILL_PATTERN)
    prompt: str = Field(min_length=1)
    answer: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class Provenance(_Frozen):
    """Where an example came from, so a bad batch can be traced to its maker."""

    generator: str = Field(min_length=1)
    model: str | None = None
    seed: int | None = None


class Example(_Frozen):
    """One training pair. The id is derived from the content when not given."""

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)
    skill: str = Field(pattern=_SKILL_PATTERN)
    source: Provenance
    id: str = ""

    @model_validator(mode="after")
    def _fill_id(self) -> Example:
        if not self.id:
            object.__setattr__(self, "id", _digest(self.skill, self.prompt, self.completion))
        return self


class Prediction(_Frozen):
    """The student's output for one problem, as scored by the task."""

    problem_id: str
    completion: str
    correct: bool
    score: float = Field(ge=0.0, le=1.0)


class SkillStats(_Frozen):
    """Accuracy of one skill on one split."""

    skill: str
    correct: int = Field(ge=0)
    total: int = Field(ge=0)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @model_validator(mode="after")
    def _check_counts(self) -> SkillStats:
        if self.correct > self.total:
            raise ValueError(f"correct={self.correct} exceeds total={self.total}")
        return self


class ErrorCase(_Frozen):
    """A wrong answer, kept as evidence for the teacher."""

    problem_id: str
    skill: str
    prompt: str
    student_answer: str
    gold_answer: str


class EvalReport(_Frozen):
    """Per-skill accuracy plus a bounded sample of errors.

    ``accuracy`` is the mean over skills (macro average), not over problems, so
    a skill with many validation items cannot hide a skill with few.
    """

    split: Literal["val", "test"]
    skills: dict[str, SkillStats]
    errors: list[ErrorCase] = Field(default_factory=list)

    @property
    def accuracy(self) -> float:
        if not self.skills:
            return 0.0
        return sum(s.accuracy for s in self.skills.values()) / len(self.skills)

    def skill_accuracy(self) -> dict[str, float]:
        return {name: s.accuracy for name, s in self.skills.items()}


class Allocation(_Frozen):
    """A plan: how many new examples to make for each skill."""

    counts: dict[str, int]

    @field_validator("counts")
    @classmethod
    def _non_negative(cls, counts: dict[str, int]) -> dict[str, int]:
        for skill, n in counts.items():
            if n < 0:
                raise ValueError(f"count for skill {skill!r} is {n}; counts must be >= 0")
        return counts

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def clamped(self, cap: int) -> Allocation:
        """The same plan scaled down to at most ``cap`` examples in total.

        Counts keep their proportions (largest-remainder rounding, exact
        integer arithmetic, so a count of 10**30 is as safe as 30). A plan
        that fits is returned unchanged. This is what lets an env refuse to
        make a generator produce more than a step may use, whatever a teacher
        asks for.

        >>> Allocation(counts={"a": 10**12, "b": 10**12, "c": 0}).clamped(5).counts
        {'a': 3, 'b': 2, 'c': 0}
        """
        if cap < 0:
            raise ValueError(f"cap must be >= 0, got {cap}")
        total = self.total
        if total <= cap:
            return self
        names = list(self.counts)
        exact = [self.counts[k] * cap for k in names]
        base = [x // total for x in exact]
        order = sorted(range(len(names)), key=lambda i: (-(exact[i] % total), i))
        for i in order[: cap - sum(base)]:
            base[i] += 1
        return Allocation(counts=dict(zip(names, base, strict=True)))

    @classmethod
    def from_weights(cls, skills: list[str], weights: Any, total: int) -> Allocation:
        """Split ``total`` examples across ``skills`` in proportion to ``weights``.

        Largest-remainder rounding keeps the sum exactly ``total``; an all-zero
        vector means "no preference" and spreads evenly, so an RL policy whose
        clipped action happens to be all zeros still gets a valid plan.
        """
        w = [float(x) for x in weights]
        if len(w) != len(skills):
            raise ValueError(f"expected {len(skills)} weights, got {len(w)}")
        for skill, x in zip(skills, w, strict=True):
            if not math.isfinite(x) or x < 0:
                raise ValueError(f"weight for skill {skill!r} is {x}; weights must be finite >= 0")
        s = sum(w)
        if s == 0:
            w, s = [1.0] * len(w), float(len(w))
        exact = [total * x / s for x in w]
        base = [math.floor(x) for x in exact]
        order = sorted(range(len(w)), key=lambda i: (base[i] - exact[i], i))
        for i in order[: total - sum(base)]:
            base[i] += 1
        return cls(counts=dict(zip(skills, base, strict=True)))


class TreeAction(_Frozen):
    """A SkillTree move.

    ``explore`` adds ``new_subskills`` under ``skill`` and gives them
    ``allocation`` examples; ``exploit`` re-allocates ``allocation`` among the
    existing children of ``skill`` (or the skill itself when it is a leaf).
    """

    kind: Literal["explore", "exploit"]
    skill: str = Field(pattern=_SKILL_PATTERN)
    allocation: dict[str, int] = Field(default_factory=dict)
    new_subskills: list[str] = Field(default_factory=list)

    @field_validator("allocation")
    @classmethod
    def _non_negative(cls, allocation: dict[str, int]) -> dict[str, int]:
        return Allocation._non_negative(allocation)

    @model_validator(mode="after")
    def _explore_names_children(self) -> TreeAction:
        if self.kind == "explore" and not self.new_subskills:
            raise ValueError("an explore action must name at least one new subskill")
        if self.kind == "exploit" and self.new_subskills:
            raise ValueError("an exploit action cannot add subskills; use kind='explore'")
        return self


class TextPlan(_Frozen):
    """Free-text instructions for a generator, as an LLM teacher writes them."""

    text: str = Field(min_length=1, max_length=4000)
