"""The task protocol: what the student must learn and how it is scored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from teachgym.envs.skills import SkillTree
from teachgym.types import Problem

Split = Literal["val", "test"]


@runtime_checkable
class Task(Protocol):
    """A skill-labelled evaluation set with a scorer.

    ``problems("val")`` is what the teacher is shown every step;
    ``problems("test")`` is reported only at the end of an episode.

    Optional methods, looked up with ``getattr`` by the components that use
    them (a task without them still satisfies the protocol):

    - ``check(prompt: str, answer: str) -> bool | None``: is ``answer`` the
      right answer to ``prompt``, written the way this task writes answers?
      ``None`` means the task cannot read the prompt (not written the way the
      task writes its prompts, or outside what the task can answer). The
      ``llm`` generator drops an example whose answer is wrong as
      ``rejected["wrong_answer"]`` and one whose prompt the task cannot read
      as ``rejected["unparseable_prompt"]``, so a wrong generated example is
      never trained on. A task that can verify nothing leaves ``check`` out,
      and the ``llm`` generator then keeps examples unverified (it counts
      them in its stats as ``unverified``).
    - ``skill_of(prompt: str) -> str | None``: the leaf skill a prompt
      belongs to, or ``None`` when the task cannot tell. The ``llm``
      generator drops an example labelled with a skill its prompt does not
      belong to as ``rejected["wrong_skill"]`` (a mislabelled example would
      teach the teacher the wrong lesson about what helps which skill).
    - ``format_description(skill: str) -> str``: how this task writes a
      prompt and its answer, in words, for a generator that cannot show
      sampled problems (a task without ``sample``). Never an evaluation item.
    - ``score_batch(problems, outputs) -> list[bool]``: scores a whole split
      in one call, so a task can score in parallel (the ``code`` task runs
      its sandboxes in a pool). The env uses it when present and ``score``
      otherwise (:func:`~teachgym.envs.evaluation.score_outputs`); the two
      must agree.
    - ``verify(candidates) -> list[str | None]``: a batched check of
      generated examples too costly for ``check`` (running code in a
      sandbox) or for tasks that cannot compute an answer (a GSM8K word
      problem). Each candidate is a mapping with ``prompt``, ``answer`` and
      the task's ``generation_fields``; a verdict is ``None`` (keep) or the
      rejection reason the ``llm`` generator counts (``failed_tests``,
      ``no_final_answer``, ...).  ``verifies_answers = True`` says that it checks
      answers (the ``code`` task runs them against tests), not only their
      form (a GSM8K answer has a final number); the ``llm`` generator counts
      examples no check looked at the answer of as ``unverified``.
    - ``generation_fields: Mapping[str, int]``: extra string fields, with
      their maximum length, that a generated example must carry for
      ``verify`` (the ``code`` task's ``{"test": ...}``: a generated function
      comes with the tests it must pass). They are not trained on.
    - ``answers_agree(answer: str, output: str) -> bool``: whether a second,
      independent solution ``output`` reaches the same final answer as the
      generated ``answer``. With it, the ``llm`` generator's ``cross_check``
      asks the LLM to solve each generated problem again and drops examples
      whose two answers disagree (``rejected["disagreement"]``).
    - ``indented_answers: bool``: answers whose leading whitespace is part of
      them (a code body). The ``llm`` generator then strips only blank lines
      and trailing whitespace from a generated answer, not the first line's
      indentation.
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
    (GSM8K, HumanEval) do not provide it and need an LLM generator instead.
    """

    alphabet: str

    def sample(self, skill: str, n: int, rng: np.random.Generator) -> Sequence[Problem]: ...
