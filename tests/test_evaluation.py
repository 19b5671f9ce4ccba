"""The scoring seam: ``score_outputs`` (batched) and the pure ``build_report``."""

from __future__ import annotations

from typing import Any

import pytest

from teachgym.assembly import make_env
from teachgym.envs.evaluation import build_report, score_outputs
from teachgym.envs.skills import SkillTree
from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.types import Problem


def _p(i: int, skill: str, answer: str = "1") -> Problem:
    return Problem(id=f"p{i}", skill=skill, prompt=f"q{i}", answer=answer)


def test_build_report_counts_per_skill_and_keeps_predictions_in_order() -> None:
    problems = [_p(0, "a"), _p(1, "a"), _p(2, "b"), _p(3, "b"), _p(4, "b")]
    outputs = ["x0", "x1", "x2", "x3", "x4"]
    scores = [True, False, True, True, False]
    report, predictions = build_report("val", problems, outputs, scores, max_errors=10)
    assert report.split == "val"
    assert {s: (st.correct, st.total) for s, st in report.skills.items()} == {
        "a": (1, 2),
        "b": (2, 3),
    }
    assert report.accuracy == pytest.approx((1 / 2 + 2 / 3) / 2)  # the mean over skills
    assert [p.problem_id for p in predictions] == ["p0", "p1", "p2", "p3", "p4"]
    assert [p.correct for p in predictions] == scores
    assert [p.completion for p in predictions] == outputs
    assert [(e.problem_id, e.student_answer) for e in report.errors] == [("p1", "x1"), ("p4", "x4")]


def test_build_report_takes_errors_one_skill_at_a_time() -> None:
    problems = [_p(i, "a") for i in range(5)] + [_p(10 + i, "b") for i in range(5)]
    outputs = ["wrong"] * 10
    report, _ = build_report("test", problems, outputs, [False] * 10, max_errors=4)
    assert [e.skill for e in report.errors] == ["a", "b", "a", "b"]
    assert [e.problem_id for e in report.errors] == ["p0", "p10", "p1", "p11"]


def test_build_report_is_pure() -> None:
    problems = [_p(0, "a"), _p(1, "b")]
    args = ("val", problems, ["1", "2"], [True, False], 3)
    assert build_report(*args) == build_report(*args)


def test_build_report_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        build_report("val", [_p(0, "a")], ["x"], [True, False], max_errors=1)
    with pytest.raises(ValueError, match="max_errors"):
        build_report("val", [_p(0, "a")], ["x"], [True], max_errors=-1)


class _BatchTask:
    """A task whose batch scorer must be used: its single-item scorer refuses."""

    name = "batch"
    skills = SkillTree(["a", "b"])

    def __init__(self, n: int | None = None) -> None:
        self.calls: list[int] = []
        self.n = n

    def problems(self, split: str) -> list[Problem]:
        return []

    def score(self, problem: Problem, output: str) -> bool:
        raise AssertionError("score() called although score_batch exists")

    def score_batch(self, problems: list[Problem], outputs: list[str]) -> list[bool]:
        self.calls.append(len(problems))
        scores = [p.answer == o for p, o in zip(problems, outputs, strict=True)]
        return scores if self.n is None else scores[: self.n]


def test_score_outputs_prefers_one_batch_call() -> None:
    task = _BatchTask()
    problems = [_p(0, "a", "1"), _p(1, "a", "2"), _p(2, "b", "3")]
    assert score_outputs(task, problems, ["1", "0", "3"]) == [True, False, True]
    assert task.calls == [3]


def test_score_outputs_checks_lengths() -> None:
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        score_outputs(_BatchTask(n=1), [_p(0, "a"), _p(1, "a")], ["1", "1"])
    with pytest.raises(ValueError, match="1 outputs for 2 problems"):
        score_outputs(_BatchTask(), [_p(0, "a"), _p(1, "a")], ["1"])


def test_score_outputs_falls_back_to_score() -> None:
    task = ArithmeticTask(val_per_skill=2, test_per_skill=2)
    problems = task.problems("val")[:3]
    outputs = [problems[0].answer, problems[1].answer + "0", problems[2].answer]
    assert score_outputs(task, problems, outputs) == [True, False, True]


class _CountingArithmetic(ArithmeticTask):
    """Arithmetic scored only through ``score_batch``, counting calls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[int] = []

    def score(self, problem: Problem, output: str) -> bool:
        raise AssertionError("the env scored one item at a time")

    def score_batch(self, problems: list[Problem], outputs: list[str]) -> list[bool]:
        self.batches.append(len(problems))
        return [ArithmeticTask.score(self, p, o) for p, o in zip(problems, outputs, strict=True)]


def test_env_scores_each_evaluation_in_one_batch() -> None:
    task = _CountingArithmetic(val_per_skill=2, test_per_skill=3)
    env = make_env(
        "teachgym/SkillList-v0", task=task, budget=40, examples_per_step=20, max_steps=2, seed=0
    )
    env.reset(seed=0)
    n_val = len(task.problems("val"))
    assert task.batches == [n_val]
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        done = terminated or truncated
    n_test = len(task.problems("test"))
    assert task.batches == [n_val, n_val, n_val, n_test]
    assert 0.0 <= info["test_accuracy"] <= 1.0
    env.close()
