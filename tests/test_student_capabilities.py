"""What other parts learn of a student through its capability protocols, not attribute
probes: the Ray worker's report and call allow-list, and the forgetting wrapper's model."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.students.forgetting import ForgettingStudent
from teachgym.students.remote import WORKER_CALLS, StudentWorker
from teachgym.students.tiny import tiny_student_for_task
from teachgym.types import Example, Problem, Provenance

TASK = ArithmeticTask(skills=["add/no_carry"], val_per_skill=4, test_per_skill=4)
SMALL = {"hidden_size": 32, "layers": 1, "heads": 2, "batch_size": 8, "eval_batch_size": 7}


class _PlainStudent:
    """Only the ``Student`` protocol: no horizon, no evaluation batch, no torch model."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def train(self, examples: Sequence[Example]) -> dict[str, float]:
        self.calls.append("train")
        return {"loss": 0.0, "steps": 0.0, "tokens": 0.0}

    def predict(self, problems: Sequence[Problem]) -> list[str]:
        return ["" for _ in problems]

    def save(self, path: str | Path) -> None:
        self.calls.append("save")

    def load(self, path: str | Path) -> None:
        self.calls.append("load")

    def reset(self) -> None:
        self.calls.append("reset")


def _worker(student: Any) -> StudentWorker:
    return StudentWorker(lambda config, threads: (TASK, student), {}, 1)


def _examples(n: int) -> list[Example]:
    src = Provenance(generator="test")
    problems = TASK.sample("add/no_carry", n, np.random.default_rng(0))
    return [
        Example(prompt=p.prompt, completion=p.answer, skill=p.skill, source=src) for p in problems
    ]


def test_the_worker_reports_what_the_student_offers() -> None:
    tiny = tiny_student_for_task(TASK, seed=0, **SMALL)
    assert _worker(tiny).capabilities() == {"eval_batch_size": 7, "set_horizon": True}
    # Through the forgetting wrapper: the wrapped student's batch size and horizon hook.
    wrapped = ForgettingStudent(tiny, every=2, fraction=0.5)
    assert _worker(wrapped).capabilities() == {"eval_batch_size": 7, "set_horizon": True}
    assert _worker(_PlainStudent()).capabilities() == {
        "eval_batch_size": None,
        "set_horizon": False,
    }


def test_the_worker_calls_only_the_allowed_methods_by_name(tmp_path: Path) -> None:
    plain = _PlainStudent()
    worker = _worker(plain)
    assert {"train", "reset", "set_horizon"} == WORKER_CALLS
    assert worker.call("train", []) == {"loss": 0.0, "steps": 0.0, "tokens": 0.0}
    worker.call("reset")
    for name in ("save", "load", "__init__", "calls"):
        with pytest.raises(ValueError, match=f"runs only .* not '{name}'"):
            worker.call(name, tmp_path)
    assert plain.calls == ["train", "reset"]  # the refused names never reached the student
    tiny = tiny_student_for_task(TASK, seed=0, **SMALL)
    metrics = _worker(tiny).call("train", _examples(8))
    assert metrics["steps"] == 1.0


def test_forgetting_needs_a_student_with_a_torch_model() -> None:
    with pytest.raises(ValueError, match="needs a student with a torch `model`; _PlainStudent"):
        ForgettingStudent(_PlainStudent(), every=2, fraction=0.5)
    not_torch = _PlainStudent()
    not_torch.model = "weights"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="torch `model`"):
        ForgettingStudent(not_torch, every=2, fraction=0.5)
    with_model = _PlainStudent()
    with_model.model = torch.nn.Linear(2, 2)  # type: ignore[attr-defined]
    forgetting = ForgettingStudent(with_model, every=1, fraction=1.0)
    start = {k: v.clone() for k, v in with_model.model.state_dict().items()}
    with torch.no_grad():
        with_model.model.weight.add_(1.0)
    forgetting.train([])  # every train call forgets, all the way back
    assert all(torch.equal(v, start[k]) for k, v in with_model.model.state_dict().items())


def test_the_forgetting_wrapper_shows_capabilities_to_a_static_lookup() -> None:
    # Python 3.12's runtime Protocol checks use inspect.getattr_static, which does not
    # see what __getattr__ forwards: the wrapper must hold the wrapped student's own.
    tiny = tiny_student_for_task(TASK, seed=0, **SMALL)
    wrapped = ForgettingStudent(tiny, every=2, fraction=0.5)
    for name in ("set_horizon", "take_perf", "eval_batch_size"):
        assert inspect.getattr_static(wrapped, name, None) is not None, name
    assert inspect.getattr_static(wrapped, "eval_batch_size") == 7

    class _PlainTorch(_PlainStudent):
        model = torch.nn.Linear(2, 2)

    plain = ForgettingStudent(_PlainTorch(), every=2, fraction=0.5)
    for name in ("set_horizon", "take_perf", "close", "eval_batch_size"):
        assert inspect.getattr_static(plain, name, None) is None, name


class _Evaluator:
    """An evaluator stand-in: echoes, and optionally counts prompts it cut."""

    def __init__(self, info: dict[str, int] | None) -> None:
        if info is not None:
            self.info = info

    def predict(self, problems: Sequence[Problem], adapter: Any) -> list[str]:
        return [p.prompt for p in problems]


def test_evaluator_truncation_is_read_through_its_protocol() -> None:
    from collections import Counter

    from teachgym.students.eval_sync import EvaluatorSync, ReportsTruncation

    problems = TASK.problems("val")[:3]
    for info, want in (({"truncated_prompts": 2}, 2), (None, 0)):
        evaluator = _Evaluator(info)
        assert isinstance(evaluator, ReportsTruncation) is (info is not None)
        sync = EvaluatorSync(factory=lambda student, e=evaluator: e)
        sync.sync = lambda student: None  # type: ignore[method-assign]  # no weights to write
        counts: Counter[str] = Counter()
        assert sync.predict(object(), problems, counts) == [p.prompt for p in problems]
        assert counts["truncated_prompts"] == want
