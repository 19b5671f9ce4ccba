"""MATH (Hendrycks et al.): competition problems with LaTeX answers, scored by value.

A row is ``{"problem", "solution", "type", "level"}`` (plus an optional
``"answer"``): ``type`` is the subject ("Counting & Probability"), ``level``
"Level 1" to "Level 5". The gold final answer is ``answer`` when the row has
one, else the last ``\\boxed{...}`` of the solution; a row with neither is
skipped (counted in ``skipped_rows``). An output is scored by
:func:`math_equal` on its last ``\\boxed{}`` (or, failing that, a ``#### x``
line or "the answer is x"), so ``\\dfrac12``, ``0.5`` and ``1/2`` all score.

Skills are gold by default: the subject, slugified (``counting_and_probability``,
7 leaves). ``by_level=True`` puts the level under it
(``algebra/level_3``, up to 35 leaves; ``level_unknown`` for MATH's few
"Level ?" rows): finer, but with the default 256 val problems only about 7 per
leaf, so per-skill accuracy is noisy. ``skills="none"``/``"discovered"``
work as for every dataset task.

The whole MATH test split is 5,000 problems; ``test_size`` defaults to a
seeded 500 of them (not the MATH-500 list: a random, seeded draw);
``test_size=None`` keeps all of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from teachgym.envs.tasks.answers import extract_boxed, math_equal
from teachgym.envs.tasks.dataset import DatasetOptions, DatasetTask, Row, slugify_skill
from teachgym.options import takes

__all__ = ["MATHTask"]

_LEVEL = re.compile(r"^\s*Level\s+(\d)\s*$")


class MATHOptions(DatasetOptions):
    """Options of :class:`MATHTask` (``task: math``): a dataset task's, and its own."""

    by_level: bool = Field(default=False, description="one skill per subject and level")


class MATHTask(DatasetTask):
    """MATH as a teachgym task (see :class:`~teachgym.envs.tasks.dataset.DatasetTask`).

    Args (beyond the base's ``path``, ``val_size`` (256), ``test_size``
    (500), ``split_seed``, ``skills`` (``"gold"``), ``llm``, ``discovery``,
    ``discovery_train_items``, ``hub_name``, ``hub_config``):
        by_level: gold skills are ``subject/level_k`` instead of ``subject``.

    A problem's ``prompt`` is the problem text, its ``answer`` the full
    solution (ending in ``\\boxed{...}``), ``metadata["final_answer"]`` the
    gold answer, ``metadata["subject"]`` and ``metadata["level"]`` (an int,
    or ``None`` for "Level ?").

    >>> from pathlib import Path
    >>> fixture = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "math_small.jsonl"
    >>> task = MATHTask(fixture, val_size=4, test_size=6)
    >>> p = task.problems("test")[0]
    >>> task.score(p, p.answer), task.score(p, r"\\boxed{\\text{no}}")
    (True, False)
    """

    name = "math"
    hub_name = "hendrycks/competition_math"
    hub_config = None
    has_gold_skills = True
    default_val_size = 256
    default_test_size = 500

    @takes(MATHOptions)
    def __init__(self, path: Any, *, by_level: bool, **kwargs: Any) -> None:
        self.by_level = by_level
        super().__init__(path, **kwargs)

    def parse_row(self, row: Mapping[str, Any]) -> Row | None:
        problem, solution = row["problem"], row["solution"]
        subject, level_text = row["type"], row["level"]
        if not all(isinstance(x, str) for x in (problem, solution, subject, level_text)):
            raise TypeError("'problem', 'solution', 'type' and 'level' must be strings")
        given = row.get("answer")
        final = given.strip() if isinstance(given, str) and given.strip() else None
        if final is None:
            final = extract_boxed(solution)
        if final is None or not final.strip():
            return None
        m = _LEVEL.match(level_text)
        level = int(m.group(1)) if m else None
        skill = slugify_skill(subject)
        if self.by_level:
            skill += f"/level_{level}" if level is not None else "/level_unknown"
        return Row(
            prompt=problem.strip(),
            answer=solution.strip(),
            metadata={"final_answer": final.strip(), "subject": subject, "level": level},
            gold_skill=skill,
        )

    def final_answer(self, text: str) -> str | None:
        """The last ``\\boxed{}``; else the last ``#### x`` line; else "the answer is x"."""
        boxed = extract_boxed(text)
        if boxed is not None and boxed.strip():
            return boxed.strip()
        marked = re.findall(r"####\s*([^\n]+)", text)
        if marked:
            return marked[-1].strip()
        said = re.findall(r"answer\s+is\s*:?\s*([^\n]+)", text, flags=re.IGNORECASE)
        if said:
            value = said[-1].strip().strip("$").strip().rstrip(".").strip().strip("$").strip()
            return value or None
        return None

    def written_final_answer(self, text: str) -> str | None:
        """The last ``\\boxed{}`` only: MATH solutions box their answer, and so must examples."""
        boxed = extract_boxed(text)
        return boxed.strip() if boxed is not None and boxed.strip() else None

    def finals_equal(self, gold: str, output: str) -> bool:
        return math_equal(gold, output)

    def format_description(self, skill: str) -> str:
        head = skill.split("/")[0] if skill else ""
        topic = f" about {head.replace('_', ' ')}" if head and head != "all" else ""
        level = re.search(r"level_(\d)", skill or "")
        hardness = f", difficulty level {level.group(1)} of 5" if level else ""
        return (
            f"A prompt is a competition mathematics problem{topic}{hardness}, written in "
            "English with LaTeX math between dollar signs (e.g. 'What is $\\frac{1}{2} + "
            "\\frac{1}{3}$?'). The answer is a complete worked solution in the same style, "
            "and the final answer appears exactly once as \\boxed{...} at the end (e.g. "
            "'so the sum is $\\boxed{\\frac{5}{6}}$.'), simplified: exact fractions, "
            "radicals and pi rather than decimals, intervals and tuples in brackets."
        )
