"""The ``llm`` generator's prompts: the prompt file (its sections and placeholders) and the
lines a request shows (sampled problems, the student's errors).

:class:`~teachgym.agents.generators.llm.LLMGenerator` puts its requests together from these.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from teachgym.agents.generators.procedural import source_skills
from teachgym.agents.llm.prompt_file import load_prompt_file
from teachgym.envs.tasks.base import TaskCapabilities
from teachgym.types import ErrorCase, EvalReport, Problem

#: The prompt used unless ``prompt_file`` names another (same sections, same placeholders).
DEFAULT_PROMPT_FILE = Path(__file__).resolve().parent.parent / "prompts" / "generator.txt"

#: The prompt file's sections, and the placeholders its templates may use.
SECTIONS = ("system", "skill", "text")
PLACEHOLDERS = ("n", "skill", "format", "examples", "errors", "plan", "skills")

#: Used for ``$format`` when the task has no ``format_description``.
GENERIC_FORMAT = (
    "Write each prompt exactly as the student will see it and each answer exactly as "
    "the student must write it, in the format of the problems shown."
)


def load_prompts(path: str | Path) -> dict[str, string.Template]:
    """The three templates of a prompt file; errors name the file and what is wrong.

    Checked at construction (every section present, no unknown placeholder), so
    a typo in a custom prompt fails before any request is paid for.
    """
    loaded = load_prompt_file(path, placeholders=PLACEHOLDERS, sections=SECTIONS)
    return dict(loaded.templates)


def example_line(problem: Problem, label: str | None) -> str:
    data = {"prompt": problem.prompt, "answer": problem.answer}
    if label is not None:
        data = {"skill": label, **data}
    return json.dumps(data, ensure_ascii=False)


def error_line(error: ErrorCase) -> str:
    return (
        f"{error.prompt}  student: {error.student_answer or '<empty>'}  "
        f"correct: {error.gold_answer}  (skill {error.skill})"
    )


def format_text(caps: TaskCapabilities, skill: str | None) -> str:
    """``$format``: the task's format description of ``skill`` (of the first task skill that
    serves it, for a skill the task does not know), or :data:`GENERIC_FORMAT` when the task
    describes none."""
    describer = caps.describer
    if describer is None:
        return GENERIC_FORMAT
    if skill is not None:
        sources, _ = source_skills(skill, list(caps.leaf_skills))
        if sources:
            return str(describer.format_description(sources[0]))
    return str(describer.format_description(skill or ""))


def errors_text(report: EvalReport | None, skill: str | None, limit: int) -> str:
    """``$errors``: at most ``limit`` of the student's errors on ``skill`` or a skill related
    to it (``None``: on any skill), one line each; ``(none)`` when there are none."""
    if report is None or limit == 0:
        return "(none)"
    errors = [e for e in report.errors if skill is None or related(e.skill, skill)]
    lines = [error_line(e) for e in errors[:limit]]
    return "\n".join(lines) or "(none)"


def related(a: str, b: str) -> bool:
    """Same skill, or one an ancestor of the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")
