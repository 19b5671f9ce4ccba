"""Scoring a student's outputs and building the :class:`~teachgym.types.EvalReport`.

Two functions, kept apart on purpose. :func:`score_outputs` is the only
place that asks a task whether outputs are right, and it asks for a whole
batch at once (``Task.score_batch`` when the task has it), so a task can
score in parallel: the ``code`` task runs a sandbox per output in a process
pool. :func:`build_report` is pure: problems, outputs and scores in, report
out, no task, no student, no state. It can run wherever the scores are (the
env, an evaluation worker, a notebook over saved predictions) and always gives
the same report for the same inputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from teachgym.envs.tasks.base import Task, TaskCapabilities
from teachgym.types import ErrorCase, EvalReport, Prediction, Problem, SkillStats

__all__ = ["build_report", "score_outputs"]


def score_outputs(
    task: Task | TaskCapabilities, problems: Sequence[Problem], outputs: Sequence[str]
) -> list[bool]:
    """Whether each output is right: ``score_batch`` if the task offers it
    (:class:`~teachgym.envs.tasks.base.BatchScoring`), else ``score``.

    ``task`` may be the task or its capabilities (read once by the caller).
    Raises ``ValueError`` when the lengths differ or the task's batch scorer
    returns the wrong number of verdicts: a silent ``zip`` would mis-assign
    scores to problems.
    """
    caps = task if isinstance(task, TaskCapabilities) else TaskCapabilities.of(task)
    task = caps.task
    if len(problems) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(problems)} problems")
    if caps.batch_scorer is not None:
        scores = [bool(s) for s in caps.batch_scorer.score_batch(list(problems), list(outputs))]
        if len(scores) != len(problems):
            raise ValueError(
                f"{type(task).__name__}.score_batch returned {len(scores)} scores "
                f"for {len(problems)} problems"
            )
        return scores
    return [bool(task.score(p, o)) for p, o in zip(problems, outputs, strict=True)]


def build_report(
    split: str,
    problems: Sequence[Problem],
    outputs: Sequence[str],
    scores: Sequence[bool],
    max_errors: int,
) -> tuple[EvalReport, list[Prediction]]:
    """The report of one evaluation, per skill, with at most ``max_errors`` errors.

    Errors are taken one skill at a time (round robin, in problem order within
    a skill), so a teacher shown a bounded sample of errors still sees every
    skill the student fails, not just the first skill's.
    """
    if not len(problems) == len(outputs) == len(scores):
        raise ValueError(
            f"problems, outputs and scores differ in length: "
            f"{len(problems)}, {len(outputs)}, {len(scores)}"
        )
    if max_errors < 0:
        raise ValueError(f"max_errors must be >= 0, got {max_errors}")
    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    predictions: list[Prediction] = []
    errors_by_skill: dict[str, list[ErrorCase]] = {}
    for problem, output, score in zip(problems, outputs, scores, strict=True):
        ok = bool(score)
        total[problem.skill] += 1
        correct[problem.skill] += ok
        predictions.append(
            Prediction(problem_id=problem.id, completion=output, correct=ok, score=float(ok))
        )
        if not ok:
            errors_by_skill.setdefault(problem.skill, []).append(
                ErrorCase(
                    problem_id=problem.id,
                    skill=problem.skill,
                    prompt=problem.prompt,
                    student_answer=output,
                    gold_answer=problem.answer,
                )
            )
    skills = {s: SkillStats(skill=s, correct=correct[s], total=total[s]) for s in total}
    report = EvalReport(
        split=split,  # type: ignore[arg-type]
        skills=skills,
        errors=_round_robin(errors_by_skill, max_errors),
    )
    return report, predictions


def _round_robin(by_skill: dict[str, list[ErrorCase]], limit: int) -> list[ErrorCase]:
    """Up to ``limit`` errors, taking one skill at a time so every skill shows."""
    out: list[ErrorCase] = []
    queues = [list(v) for v in by_skill.values()]
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out
