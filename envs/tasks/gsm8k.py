"""GSM8K: grade-school word problems, scored by the final number.

A row is ``{"question", "answer"}``; the answer is a worked solution whose
last line is ``#### n``. The student is asked to write the same: reasoning,
then ``#### n``. Only the final number is scored (:func:`extract_final_number`
reads it, falling back to ``\\boxed{}``, "the answer is n" and the last number,
so a model that ignores the format is still scored on its number).

The dataset has no skill labels: the default is one skill (``all``), or
``skills="discovered"`` lets an LLM name them (see
:mod:`teachgym.envs.tasks.dataset`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from teachgym.envs.tasks.answers import extract_final_number, numbers_equal
from teachgym.envs.tasks.dataset import DatasetOptions, DatasetTask, Row
from teachgym.options import takes

__all__ = ["GSM8KTask"]

#: GSM8K's calculator annotations, ``<<9*2=18>>``: tool-use markup for the dataset's
#: original verifier, not reasoning a student should learn to write.
_CALC = re.compile(r"<<[^<>]*>>")


class GSM8KOptions(DatasetOptions):
    """Options of :class:`GSM8KTask` (``task: gsm8k``): a dataset task's, and its own."""

    keep_calculator: bool = Field(
        default=False, description="keep the <<a*b=c>> annotations in gold solutions"
    )


class GSM8KTask(DatasetTask):
    """GSM8K as a teachgym task (see :class:`~teachgym.envs.tasks.dataset.DatasetTask`).

    Args (beyond the base's ``path``, ``val_size`` (256), ``test_size`` (all
    1319 of the test split), ``split_seed``, ``skills``, ``llm``,
    ``discovery``, ``discovery_train_items``, ``hub_name``, ``hub_config``):
        keep_calculator: keep the ``<<a*b=c>>`` annotations in gold solutions
            (by default they are removed).

    A problem's ``prompt`` is the question, its ``answer`` the worked solution
    ending ``#### n``, ``metadata["final_answer"]`` the canonical ``n``.

    >>> from pathlib import Path
    >>> fixture = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gsm8k_small.jsonl"
    >>> task = GSM8KTask(fixture, val_size=3, test_size=3)
    >>> p = task.problems("test")[0]
    >>> task.score(p, p.answer), task.score(p, "#### 123456789")
    (True, False)
    """

    name = "gsm8k"
    hub_name = "openai/gsm8k"
    hub_config = "main"
    has_gold_skills = False
    default_val_size = 256
    default_test_size = None

    @takes(GSM8KOptions)
    def __init__(self, path: Any, *, keep_calculator: bool, **kwargs: Any) -> None:
        self.keep_calculator = keep_calculator
        super().__init__(path, **kwargs)

    def parse_row(self, row: Mapping[str, Any]) -> Row | None:
        question, solution = row["question"], row["answer"]
        if not isinstance(question, str) or not isinstance(solution, str):
            raise TypeError("'question' and 'answer' must be strings")
        final = extract_final_number(solution) if "####" in solution else None
        if final is None:
            return None
        if not self.keep_calculator:
            solution = _CALC.sub("", solution)
        return Row(
            prompt=question.strip(), answer=solution.strip(), metadata={"final_answer": final}
        )

    def final_answer(self, text: str) -> str | None:
        return extract_final_number(text)

    def written_final_answer(self, text: str) -> str | None:
        """The number on the last ``#### n`` line, or ``None`` (the format GSM8K trains)."""
        lines = [line for line in text.splitlines() if line.strip().startswith("####")]
        return extract_final_number(lines[-1]) if lines else None

    def finals_equal(self, gold: str, output: str) -> bool:
        return numbers_equal(gold, output)

    def format_description(self, skill: str) -> str:
        return (
            "A prompt is a grade-school math word problem in plain English, a few sentences "
            "long, whose answer is a single number. The answer is a short step-by-step "
            "solution in plain sentences with the arithmetic written out (e.g. 'She sells "
            "16 - 3 - 4 = 9 eggs.'), and its last line is '#### ' followed by the final "
            "number alone: digits only, no units, no currency sign, no thousands commas "
            "(e.g. '#### 18')."
        )
