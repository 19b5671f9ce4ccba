"""The task protocol: what the student must learn and how it is scored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from teachgym.envs.skills import SkillTree
from teachgym.errors import ConfigError
from teachgym.types import Problem

Split = Literal["val", "test"]


@runtime_checkable
class Task(Protocol):
    """A skill-labelled evaluation set with a scorer.

    ``problems("val")`` is what the teacher is shown every step;
    ``problems("test")`` is reported only at the end of an episode.

    What a task can do beyond this is declared by the small protocols below
    (sampling, checking an answer, scoring a batch, ...). Which of them a task
    offers is read once, when it is built, into its :class:`TaskCapabilities`;
    a component that needs one says so (``requires``), and the assembly
    refuses the combination at once, naming the missing capability.
    """

    name: str

    @property
    def skills(self) -> SkillTree: ...

    def problems(self, split: Split) -> list[Problem]: ...

    def score(self, problem: Problem, output: str) -> bool: ...


@runtime_checkable
class ProceduralTask(Task, Protocol):
    """A task that can also make fresh, exactly-answered training problems.

    The ``procedural`` generator needs this; tasks with a fixed pool of data
    (GSM8K, HumanEval) sample training-pool rows instead (``sample`` without
    an ``alphabet``), and tasks without ``sample`` need an LLM generator.
    """

    alphabet: str

    def sample(self, skill: str, n: int, rng: np.random.Generator) -> Sequence[Problem]: ...


@runtime_checkable
class Sampling(Protocol):
    """``sample(skill, n, rng)``: problems of a skill that are never evaluation items.

    A procedural task makes them; a dataset task draws them from its
    training pool. The ``llm`` generator shows them as format examples.
    """

    def sample(self, skill: str, n: int, rng: np.random.Generator) -> Sequence[Problem]: ...


@runtime_checkable
class HasAlphabet(Protocol):
    """``alphabet``: every character a prompt or an answer may hold. The env drops
    examples with other characters; the ``tiny`` student's vocabulary is exactly it."""

    alphabet: str


@runtime_checkable
class LeafSkills(Protocol):
    """``leaf_skills``: the skills problems are labelled with, in a fixed order."""

    leaf_skills: Sequence[str]


@runtime_checkable
class AnswerChecking(Protocol):
    """``check(prompt, answer)``: is ``answer`` right, written as this task writes answers?

    ``None`` means the task cannot read the prompt. The ``llm`` generator
    drops a wrong example (``wrong_answer``) and an unreadable prompt
    (``unparseable_prompt``), so no wrong generated example is trained on.
    """

    def check(self, prompt: str, answer: str) -> bool | None: ...


@runtime_checkable
class SkillClassifying(Protocol):
    """``skill_of(prompt)``: the leaf skill a prompt belongs to, or ``None``. The ``llm``
    generator drops an example labelled with another skill (``wrong_skill``)."""

    def skill_of(self, prompt: str) -> str | None: ...


@runtime_checkable
class FormatDescribing(Protocol):
    """``format_description(skill)``: how this task writes a prompt and its answer, in
    words, for a generator (never an evaluation item)."""

    def format_description(self, skill: str) -> str: ...


@runtime_checkable
class BatchScoring(Protocol):
    """``score_batch(problems, outputs)``: a whole split in one call (the ``code`` task
    runs its sandboxes in a pool); must agree with ``score``."""

    def score_batch(self, problems: Sequence[Problem], outputs: Sequence[str]) -> list[bool]: ...


@runtime_checkable
class Verifying(Protocol):
    """``verify(candidates)``: a batched check of generated examples too costly for
    ``check`` (code run against its tests) or for tasks that cannot compute an answer.

    Each candidate is a mapping with ``prompt``, ``answer`` and the task's
    :class:`GenerationFields`; a verdict is ``None`` (keep) or a rejection
    reason.
    """

    def verify(self, candidates: Sequence[Mapping[str, str]]) -> list[str | None]: ...


@runtime_checkable
class GenerationFields(Protocol):
    """``generation_fields``: extra string fields a generated example carries for
    :class:`Verifying` (a code problem's tests), each with its maximum length; the
    ``llm`` generator asks for them and never trains on them."""

    generation_fields: Mapping[str, int]


@runtime_checkable
class VerifiesAnswers(Protocol):
    """``verifies_answers``: does :class:`Verifying` check that answers are right (the
    ``code`` task runs tests), or only their form (a GSM8K final number)?"""

    verifies_answers: bool


@runtime_checkable
class AnswerAgreement(Protocol):
    """``answers_agree(answer, output)``: does an independent second solution reach the
    same final answer? The ``llm`` generator's ``cross_check`` needs it."""

    def answers_agree(self, answer: str, output: str) -> bool: ...


@runtime_checkable
class AnswerLength(Protocol):
    """``max_answer_length``: characters of the longest gold answer, so a student
    decodes no further than an answer can go."""

    max_answer_length: int


@runtime_checkable
class StopStrings(Protocol):
    """``stop_strings``: text that ends an answer (a student stops decoding there)."""

    stop_strings: Sequence[str]


@runtime_checkable
class IndentedAnswers(Protocol):
    """``indented_answers``: answers whose leading whitespace is part of them (a code
    body); the ``llm`` generator then keeps a generated answer's first indentation."""

    indented_answers: bool


@dataclass(frozen=True)
class TaskCapabilities:
    """What a task offers beyond :class:`Task`, read once with :meth:`of`.

    Each field is the task itself when it offers that protocol, else ``None``
    (or a neutral value), so the code that uses a capability calls it with
    its type known instead of probing attributes at every step.
    """

    task: Task
    sampler: Sampling | None
    alphabet: str | None
    leaf_skills: tuple[str, ...]
    checker: AnswerChecking | None
    classifier: SkillClassifying | None
    describer: FormatDescribing | None
    batch_scorer: BatchScoring | None
    verifier: Verifying | None
    #: The :class:`GenerationFields` (empty without them).
    generation_fields: Mapping[str, int]
    #: Whether the verifier checks answers, not only their form (:class:`VerifiesAnswers`).
    verifies_answers: bool
    agreement: AnswerAgreement | None
    max_answer_length: int | None
    stop_strings: tuple[str, ...]
    #: Answers whose leading whitespace belongs to them (a code body).
    indented_answers: bool

    @classmethod
    def of(cls, task: Task) -> TaskCapabilities:
        if not isinstance(task, Task):
            raise TypeError(
                f"{type(task).__name__} is not a Task: it needs name, skills, problems(split) "
                f"and score(problem, output)"
            )
        agreement = task if isinstance(task, AnswerAgreement) else None
        return cls(
            task=task,
            sampler=task if isinstance(task, Sampling) else None,
            alphabet=task.alphabet if isinstance(task, HasAlphabet) else None,
            leaf_skills=tuple(
                task.leaf_skills if isinstance(task, LeafSkills) else task.skills.leaves
            ),
            checker=task if isinstance(task, AnswerChecking) else None,
            classifier=task if isinstance(task, SkillClassifying) else None,
            describer=task if isinstance(task, FormatDescribing) else None,
            batch_scorer=task if isinstance(task, BatchScoring) else None,
            verifier=task if isinstance(task, Verifying) else None,
            generation_fields=dict(task.generation_fields or {})
            if isinstance(task, GenerationFields)
            else {},
            verifies_answers=isinstance(task, Verifying)
            and isinstance(task, VerifiesAnswers)
            and bool(task.verifies_answers),
            # A task may declare ``answers_agree = None`` to say it cannot tell.
            agreement=agreement if callable(agreement and agreement.answers_agree) else None,
            max_answer_length=(
                int(task.max_answer_length) if isinstance(task, AnswerLength) else None
            ),
            stop_strings=tuple(task.stop_strings or ()) if isinstance(task, StopStrings) else (),
            indented_answers=bool(task.indented_answers)
            if isinstance(task, IndentedAnswers)
            else False,
        )

    @property
    def name(self) -> str:
        return self.task.name

    def require(self, capability: str, by: str) -> Any:
        """The capability ``capability`` (a field name), or an error naming what needs it."""
        value = getattr(self, capability)
        if value is None:
            raise TaskCapabilityError(
                f"{by} needs a task with {_DESCRIPTIONS[capability]}; task "
                f"{self.task.name!r} ({type(self.task).__name__}) has none"
            )
        return value


_DESCRIPTIONS = {
    "sampler": "sample(skill, n, rng) (Sampling)",
    "alphabet": "an alphabet (HasAlphabet)",
    "checker": "check(prompt, answer) (AnswerChecking)",
    "classifier": "skill_of(prompt) (SkillClassifying)",
    "describer": "format_description(skill) (FormatDescribing)",
    "batch_scorer": "score_batch(problems, outputs) (BatchScoring)",
    "verifier": "verify(candidates) (Verifying)",
    "agreement": "answers_agree(answer, output) (AnswerAgreement)",
    "max_answer_length": "max_answer_length (AnswerLength)",
}


class TaskCapabilityError(ConfigError):
    """A component was paired with a task that lacks a capability it needs."""
