"""Verification of generated data in the ``llm`` generator: the task's batched ``verify``
(with the extra fields it needs in the reply schema) and the second-sample ``cross_check``.

A small word-problem task stands in for GSM8K here: it cannot compute an answer, only
read the final number of one (``answers_agree``), which is exactly the situation the
cross-check exists for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from test_llm_generator import ScriptedBackend

from teachgym.agents.generators.base import GenerationContext
from teachgym.agents.generators.llm import LLMGenerator
from teachgym.agents.llm import LLMCallError, LLMClient, RawReply, Sampling
from teachgym.envs.skills import SkillTree
from teachgym.types import Allocation, Problem

_FINAL = re.compile(r"####\s*(-?\d+)")


class WordTask:
    """Word problems whose answers end in ``#### n``; nothing can compute ``n``."""

    name = "words"

    def __init__(self, fields: Mapping[str, int] | None = None) -> None:
        if fields is not None:
            self.generation_fields = dict(fields)
        self.verified: list[list[dict[str, str]]] = []
        long_prompt = "A farmer has " + "many " * 150 + "apples. How many?"
        self._val = [
            Problem(id="v0", skill="money", prompt=long_prompt, answer="x\n#### 3"),
            Problem(id="v1", skill="time", prompt="How long?", answer="y" * 300 + "\n#### 4"),
        ]

    @property
    def skills(self) -> SkillTree:
        return SkillTree(["money", "time"])

    def problems(self, split: str) -> list[Problem]:
        return list(self._val)

    def score(self, problem: Problem, output: str) -> bool:
        return self.answers_agree(problem.answer, output)

    def format_description(self, skill: str) -> str:
        return "Reason step by step, then end with a line '#### <number>'."

    def answers_agree(self, answer: str, output: str) -> bool:
        a, b = _FINAL.search(answer), _FINAL.search(output)
        return a is not None and b is not None and int(a.group(1)) == int(b.group(1))

    def verify(self, candidates: Sequence[Mapping[str, str]]) -> list[str | None]:
        self.verified.append([dict(c) for c in candidates])
        out: list[str | None] = []
        for c in candidates:
            if _FINAL.search(c["answer"]) is None:
                out.append("no_final_answer")
            elif "test" in c and "assert" not in c["test"]:
                out.append("failed_tests")
            else:
                out.append(None)
        return out


def _context(task: WordTask, max_examples: int = 50, step: int = 0) -> GenerationContext:
    return GenerationContext(
        step=step,
        rng=np.random.default_rng([0, step]),
        max_examples=max_examples,
        skills=["money", "time"],
        task=task,
        extra={"round": 0},
    )


def _generator(task: Any, backend: ScriptedBackend, **kwargs: Any) -> LLMGenerator:
    client = LLMClient(backend, backoff_s=0.0, max_attempts=1, cache_dir=kwargs.pop("cache", None))
    return LLMGenerator(task=task, seed=0, llm=client, examples_per_request=10, **kwargs)


ITEMS = [
    {"prompt": "Ann has 2 pens and buys 3. How many?", "answer": "2+3=5\n#### 5"},
    {"prompt": "Bob has 9 cats and 4 run off. How many?", "answer": "9-4=6\n#### 6"},  # wrong
    {"prompt": "Cy reads 3 pages a day for 4 days. Pages?", "answer": "twelve pages"},  # no ####
    {"prompt": "Di saves 10 a week for 5 weeks. Total?", "answer": "10*5=50\n#### 50"},
    {"prompt": "Ed has 7 eggs and eats 2. Left?", "answer": "7-2=5\n#### 5"},  # solver fails
]

#: The second solution the LLM writes for each prompt (None: the request fails).
SOLUTIONS: dict[str, str | None] = {
    ITEMS[0]["prompt"]: "He ends with 2 + 3 = 5 pens.\n#### 5",
    ITEMS[1]["prompt"]: "9 - 4 = 5 cats.\n#### 5",
    ITEMS[3]["prompt"]: "10 * 5 = 50\n#### 50",
    ITEMS[4]["prompt"]: None,
}


def _respond(messages: list[dict[str, str]], sampling: Sampling) -> RawReply | Exception:
    user = messages[-1]["content"]
    if user in SOLUTIONS:  # a cross-check: solve this prompt again
        solution = SOLUTIONS[user]
        if solution is None:
            return LLMCallError("client_error", "refused", retryable=False)
        return RawReply(solution, "stop")
    return RawReply(json.dumps({"examples": ITEMS}), "stop")


def test_cross_check_drops_examples_whose_second_solution_disagrees(tmp_path) -> None:
    task = WordTask()
    backend = ScriptedBackend(_respond)
    gen = _generator(task, backend, cross_check=True, cache=tmp_path)
    examples, rejected = gen.generate(Allocation(counts={"money": 5}), _context(task))
    assert [e.prompt for e in examples] == [ITEMS[0]["prompt"], ITEMS[3]["prompt"]]
    assert rejected == {"disagreement": 1, "no_final_answer": 1, "cross_check_failed": 1}
    # The task's verify ran first, in one batch: the unreadable answer cost no second request.
    assert len(task.verified) == 1 and len(task.verified[0]) == 5
    solves = [(m, s, schema) for m, s, schema in backend.calls if m[-1]["content"] in SOLUTIONS]
    assert len(solves) == 4 and len(backend.calls) == 5
    assert all(schema is None and s.temperature == 0.0 for _, s, schema in solves)
    assert all("#### <number>" in m[0]["content"] for m, _, _ in solves)  # the task's format
    seeds = {s.seed for _, s, _ in solves}
    assert len(seeds) == 4 and None not in seeds

    # A rerun from the cache: same verdicts; only the failed request (never cached) is resent.
    backend2 = ScriptedBackend(_respond)
    again = _generator(WordTask(), backend2, cross_check=True, cache=tmp_path)
    examples2, rejected2 = again.generate(Allocation(counts={"money": 5}), _context(task))
    assert [e.prompt for e in examples2] == [e.prompt for e in examples]
    assert rejected2 == rejected
    assert [m[-1]["content"] for m, _, _ in backend2.calls] == [ITEMS[4]["prompt"]]


def test_without_cross_check_a_wrong_but_readable_answer_is_kept() -> None:
    task = WordTask()
    backend = ScriptedBackend(_respond)
    examples, rejected = _generator(task, backend).generate(
        Allocation(counts={"money": 5}), _context(task)
    )
    assert len(examples) == 4 and rejected == {"no_final_answer": 1}
    assert len(backend.calls) == 1


def test_cross_check_needs_a_task_that_can_compare_answers() -> None:
    class NoCompare(WordTask):
        answers_agree = None  # type: ignore[assignment]

    with pytest.raises(ValueError, match="answers_agree"):
        _generator(NoCompare(), ScriptedBackend(_respond), cross_check=True)


def test_generation_fields_are_asked_for_and_reach_verify() -> None:
    task = WordTask(fields={"test": 700})
    items = [
        {**ITEMS[0], "test": "assert f() == 5"},
        {**ITEMS[3], "test": "print('no check')"},
        {**ITEMS[4], "test": "  assert g() == 5  "},
    ]
    backend = ScriptedBackend(lambda m, s: RawReply(json.dumps({"examples": items}), "stop"))
    examples, rejected = _generator(task, backend).generate(
        Allocation(counts={"time": 3}), _context(task)
    )
    schema = backend.calls[0][2]
    assert schema is not None
    item = next(iter(schema["$defs"].values()))
    assert item["properties"]["test"]["maxLength"] == 700 and "test" in item["required"]
    assert task.verified[0][0] == {**ITEMS[0], "test": "assert f() == 5"}
    assert task.verified[0][2]["test"] == "assert g() == 5"  # stripped like prompt and answer
    assert [e.prompt for e in examples] == [ITEMS[0]["prompt"], ITEMS[4]["prompt"]]
    assert rejected == {"failed_tests": 1}


def test_reply_bounds_follow_the_task_or_the_config() -> None:
    task = WordTask()
    backend = ScriptedBackend(lambda m, s: RawReply(json.dumps({"examples": []}), "stop"))
    _generator(task, backend).generate(Allocation(counts={"money": 1}), _context(task))
    item = next(iter(backend.calls[0][2]["$defs"].values()))
    longest_prompt = len(task.problems("val")[0].prompt)
    longest_answer = len(task.problems("val")[1].answer)
    assert item["properties"]["prompt"]["maxLength"] == 2 * longest_prompt
    assert item["properties"]["answer"]["maxLength"] == 2 * longest_answer

    backend = ScriptedBackend(lambda m, s: RawReply(json.dumps({"examples": []}), "stop"))
    gen = _generator(task, backend, max_prompt_chars=123, max_answer_chars=45)
    gen.generate(Allocation(counts={"money": 1}), _context(task))
    item = next(iter(backend.calls[0][2]["$defs"].values()))
    assert item["properties"]["prompt"]["maxLength"] == 123
    assert item["properties"]["answer"]["maxLength"] == 45
    with pytest.raises(ValueError, match="max_answer_chars"):
        _generator(task, backend, max_answer_chars=0)
    with pytest.raises(ValueError, match="generation_fields"):
        _generator(WordTask(fields={"prompt": 10}), backend)


class _Accepting(WordTask):
    def verify(self, candidates: Sequence[Mapping[str, str]]) -> list[str | None]:
        return [None] * len(candidates)


class _CodeLike(_Accepting):
    indented_answers = True


def test_indented_answers_keep_their_first_line_indentation() -> None:
    items = [{"prompt": "def f(x):\n    '''x plus one'''\n", "answer": "\n    return x + 1\n\n"}]
    backend = ScriptedBackend(lambda m, s: RawReply(json.dumps({"examples": items}), "stop"))
    task: WordTask = _Accepting()
    plain, _ = _generator(task, backend).generate(Allocation(counts={"time": 1}), _context(task))
    assert plain[0].completion == "return x + 1"  # other tasks: stripped both sides
    task = _CodeLike()
    examples, _ = _generator(task, backend).generate(Allocation(counts={"time": 1}), _context(task))
    assert examples[0].completion == "    return x + 1"
    assert examples[0].prompt == "def f(x):\n    '''x plus one'''"


def test_unverified_counts_kept_examples_whose_answer_nothing_checked(tmp_path) -> None:
    task = WordTask()  # its verify only reads that a final answer is there
    gen = _generator(task, ScriptedBackend(_respond))
    examples, _ = gen.generate(Allocation(counts={"money": 5}), _context(task))
    assert gen.take_stats()["unverified"] == len(examples) == 4

    checked = _generator(WordTask(), ScriptedBackend(_respond), cross_check=True)
    checked.generate(Allocation(counts={"money": 5}), _context(task))
    assert checked.take_stats()["unverified"] == 0

    class Tested(_Accepting):
        verifies_answers = True

    tested = _generator(Tested(), ScriptedBackend(_respond))
    kept, _ = tested.generate(Allocation(counts={"money": 5}), _context(task))
    assert len(kept) == 5 and tested.take_stats()["unverified"] == 0


def _code_item(name: str, answer: str, test: str) -> dict[str, str]:
    prompt = f'def {name}(x: int) -> int:\n    """Twice x.\n    >>> {name}(2)\n    4\n    """\n'
    return {"prompt": prompt, "answer": answer, "test": test}


def test_code_tests_that_prove_nothing_are_rejected_with_their_own_reasons() -> None:
    """The code task's verify, through the generator: each reason counted in ``rejected``."""
    from test_code_task import FIXTURE, FORGERIES

    from teachgym.envs.tasks.code import CodeTask
    from teachgym.sandbox import isolation_available

    if not isolation_available():
        pytest.skip("bubblewrap isolation is not available here")
    task = CodeTask(FIXTURE, val_size=2, test_size=3, timeout_s=3.0, workers=2)
    good = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-3) == -6\n"
    items = [
        _code_item("double_a", "    return 2 * x\n", good),
        _code_item("double_b", "    return 2 * x\n", "def check(c):\n    assert c(3) == c(3)\n"),
        _code_item("double_c", "    return 2 * x\n", good + "    assert c is not None\n"),
        _code_item("double_d", "    return 2 * x\n", "def check(c):\n    assert c(2) != 5\n"),
        _code_item(  # contradictory tests, and an answer that steals the pass marker
            "double_e", FORGERIES["marker_from_source"], good + "    assert candidate(2) == 5\n"
        ),
    ]
    items[2]["test"] = items[2]["test"].replace("candidate", "c")
    backend = ScriptedBackend(lambda m, s: RawReply(json.dumps({"examples": items}), "stop"))
    context = GenerationContext(
        step=0, rng=np.random.default_rng(0), max_examples=10, skills=["all"], task=task,
        extra={"round": 0},
    )  # fmt: skip
    generator = _generator(task, backend, max_answer_chars=2000)  # room for the forgery
    examples, rejected = generator.generate(Allocation(counts={"all": 5}), context)
    assert [e.prompt.split("(")[0] for e in examples] == ["def double_a"]
    assert rejected == {
        "self_comparison": 1, "always_true": 1, "weak_tests": 1, "failed_tests": 1,
    }  # fmt: skip
