"""Dataset tasks: answer extraction/normalisation, the shared split logic, GSM8K and MATH."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teachgym.envs.tasks.answers import (
    extract_boxed,
    extract_final_number,
    math_equal,
    normalize_math_answer,
    numbers_equal,
)
from teachgym.envs.tasks.base import Task
from teachgym.envs.tasks.dataset import DatasetTask, find_sources, slugify_skill
from teachgym.envs.tasks.gsm8k import GSM8KTask
from teachgym.envs.tasks.math import MATHTask
from teachgym.types import normalize_prompt

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GSM8K_FIXTURE = FIXTURES / "gsm8k_small.jsonl"
MATH_FIXTURE = FIXTURES / "math_small.jsonl"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def gsm_dir(tmp_path: Path) -> Path:
    """train (first 10 rows + a copy of test row 0 in other case/spacing) and test (last 6)."""
    rows = _rows(GSM8K_FIXTURE)
    train, test = rows[:10], rows[10:]
    leak = dict(test[0], question="  " + test[0]["question"].upper().replace(" ", "   "))
    _write(tmp_path / "gsm" / "train.jsonl", [*train, leak])
    _write(tmp_path / "gsm" / "test.jsonl.gz", test)
    return tmp_path / "gsm"


# -- answers: GSM8K numbers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("Lots of 7s and 9s here.\n#### 1,234", "1234"),
        ("first 3 then\n#### 5\nthen 6 more", "5"),  # the marker wins over the last number
        ("So it is \\boxed{42} and 7 more words", "42"),
        ("The answer is 18. Then 4 more.", "18"),
        ("The answer is $18.", "18"),
        ("It costs 18 dollars.", "18"),
        ("It is 5 cm long.", "5"),
        ("So the total is $1,234.50.", "1234.5"),
        ("The result is 18.00", "18"),
        ("It went down to -7 degrees", "-7"),
        ("16-3-4=9", "9"),  # a minus after a digit is an operator, not a sign
        ("He saved 50%", "50"),
        ("the value .5", "0.5"),
        ("#### 3/4", "3/4"),
        ("\\boxed{\\frac{3}{4}}", "3/4"),
        ("#### 007", "7"),
        ("no digits at all", None),
        ("", None),
    ],
)
def test_extract_final_number(text: str, expected: str | None) -> None:
    assert extract_final_number(text) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("18.00", "18", True),
        ("1,234", "1234", True),
        ("$18", "18", True),
        ("0.5", "1/2", True),
        ("3/4", "0.75", True),
        ("-7", "7", False),
        ("18", "19", False),
        ("0.333", "1/3", False),
        ("abc", "abc", False),  # not numbers: never equal
        (None, "1", False),
    ],
)
def test_numbers_equal(a: str | None, b: str | None, equal: bool) -> None:
    assert numbers_equal(a, b) is equal


# -- answers: MATH ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{2} and then \boxed{\left(1,\sqrt{2}\right)}", r"\left(1,\sqrt{2}\right)"),
        (r"\boxed{2} then \fbox{3}", "3"),
        (r"the answer is $\boxed 5$", "5"),
        (r"\boxed{\frac{1}{2}", None),  # unbalanced
        ("no box", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\tfrac12", r"\frac{1}{2}"),
        (r"\frac1{10}", r"\frac{1}{10}"),
        (r"\sqrt2", r"\sqrt{2}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"5\text{ cm}", "5"),
        (r"40\text{ cm}^2", "40"),
        (r"50\mbox{ mph}", "50"),
        ("5 cm", "5"),
        (r"120^\circ", "120"),
        (r"120^{\circ}", "120"),
        (r"25\%", "25"),
        (r"\$1,000", "1000"),
        ("x = 7.", "7"),
        (r"\text{(C)}", "(C)"),
        (r"3\!\cdot\!4", r"3\cdot4"),
        (".5", "0.5"),
        ("x+y=3", "x+y=3"),  # an equation is not an "x =" prefix
    ],
)
def test_normalize_math_answer(raw: str, normal: str) -> None:
    assert normalize_math_answer(raw) == normal


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0.5", r"\frac12"),
        (r"\frac{1}{2}", "1/2"),
        (r"\dfrac{3}{4}", r"\frac34"),
        (r"\sqrt{8}", r"2\sqrt{2}"),
        (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt3"),
        (r"\sqrt[3]{8}", "2"),
        (r"\frac{x+1}{2}", r"\frac{x}{2}+\frac12"),
        ("2x", r"x\cdot 2"),
        (r"2\pi", r"\pi \times 2"),
        ("3+4i", "4i+3"),
        ("2^{10}", "1024"),
        (r"\left(3,\frac{\pi}{2}\right)", r"(3, \pi/2)"),
        (r"[1,\infty)", r"[ 1 , \infty )"),
        (r"(-\infty,2)\cup(3,\infty)", r"(-\infty, 2) \cup (3, \infty)"),
        ("-2, 4", "4,-2"),  # a list of solutions: any order
        (r"40\text{ cm}^2", "40"),
        (r"120^\circ", "120"),
        ("x=5", "5"),
    ],
)
def test_math_equal_equivalent(a: str, b: str) -> None:
    assert math_equal(a, b)
    assert math_equal(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("(1,2)", "(2,1)"),  # an ordered pair keeps its order
        ("(1,2]", "(1,2)"),  # open and closed ends differ
        ("[1,2)", "(1,2)"),
        ("(1,2)", "(1,2,3)"),
        ("-2, 4", "4, 5"),  # a multiset: each element is matched once
        (r"\pi", "3.14"),
        ("0.333", r"\frac13"),
        ("10^{1000}", "10^{1000}+1"),  # exact numbers compare exactly, no tolerance
        ("x", "y"),
        (r"-\infty", r"\infty"),
        ("-2, 4", "-2, 4, 5"),
        (r"\frac{1}{0}", "1"),
        ("x+", "x"),
        ("", ""),
    ],
)
def test_math_equal_different(a: str, b: str) -> None:
    assert not math_equal(a, b)


def test_math_equal_is_bounded_and_never_runs_code() -> None:
    # A power tower would take sympy forever; hostile text must be refused, quickly.
    start = time.perf_counter()
    assert not math_equal("9^{9^{9^{9}}}", "1")
    assert not math_equal("2^{2^{100}}", "2^{2^{100}}+1")
    assert not math_equal("__import__('os').system('true')", "0")
    assert not math_equal("(1).__class__", "1")
    assert not math_equal("1" * 5000, "1" * 4999 + "2")
    assert math_equal("1" * 5000, "1" * 5000)  # identical long strings still compare
    assert time.perf_counter() - start < 5.0


# -- the shared dataset base -----------------------------------------------------------------


def test_find_sources_forms(tmp_path: Path, gsm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(find_sources(gsm_dir)) == {"train", "test"}
    assert find_sources(gsm_dir)["test"].name == "test.jsonl.gz"
    assert find_sources(GSM8K_FIXTURE) == {"pool": GSM8K_FIXTURE}
    only = tmp_path / "one"
    shutil.copy(GSM8K_FIXTURE, _write(only / "HumanEval.jsonl.gz", []).parent / "x.jsonl.gz")
    (only / "HumanEval.jsonl.gz").unlink()
    assert find_sources(only) == {"pool": only / "x.jsonl.gz"}
    monkeypatch.setenv("TG_DATA", str(gsm_dir.parent))
    assert set(find_sources("$TG_DATA/gsm")) == {"train", "test"}
    monkeypatch.setenv("HOME", str(gsm_dir.parent))
    assert set(find_sources("~/gsm")) == {"train", "test"}


def test_bad_paths_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere"):
        GSM8KTask(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        GSM8KTask(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"\.jsonl"):
        GSM8KTask(tmp_path / "data.csv")


def test_wrong_rows_raise_with_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.jsonl", [{"question": "q", "solution": "#### 1"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl.*row 0"):
        GSM8KTask(bad, test_size=1, val_size=1)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q"\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:1"):
        GSM8KTask(broken, test_size=1, val_size=1)


def test_two_source_splits(gsm_dir: Path) -> None:
    task = GSM8KTask(gsm_dir, val_size=3, split_seed=7)
    val, test = task.problems("val"), task.problems("test")
    assert len(test) == 6 and len(val) == 3
    assert [p.id for p in test] == [f"gsm8k/test/{i}" for i in range(6)]
    # The leaked copy of test row 0 (index 10 of train) is never val or train.
    test_keys = {normalize_prompt(p.prompt) for p in test}
    assert not test_keys & {normalize_prompt(p.prompt) for p in val}
    train_ids = {it.id for it in task._train}
    assert "gsm8k/train/10" not in train_ids | {p.id for p in val}
    assert task.train_size == 10 - 3
    assert not train_ids & {p.id for p in val}
    # Same seed, same split; another seed, another val.
    again = GSM8KTask(gsm_dir, val_size=3, split_seed=7)
    assert [p.id for p in again.problems("val")] == [p.id for p in val]
    assert again.problems("val") == val
    other = {
        tuple(p.id for p in GSM8KTask(gsm_dir, val_size=3, split_seed=s).problems("val"))
        for s in range(8)
    }
    assert len(other) > 1


def test_train_pool_never_repeats_a_val_prompt(tmp_path: Path) -> None:
    rows = _rows(GSM8K_FIXTURE)
    copies = [dict(r, question=r["question"].upper()) for r in rows[:10]]
    _write(tmp_path / "d" / "train.jsonl", rows[:10] + copies)
    _write(tmp_path / "d" / "test.jsonl", rows[10:])
    for seed in range(3):
        task = GSM8KTask(tmp_path / "d", val_size=4, split_seed=seed)
        val_keys = {normalize_prompt(p.prompt) for p in task.problems("val")}
        train_keys = [normalize_prompt(it.row.prompt) for it in task._train]
        assert not val_keys & set(train_keys)
        # Every row with a val prompt (original or copy) leaves the train pool.
        assert task.train_size == 20 - 2 * len(val_keys)


def test_test_subsample_is_seeded(gsm_dir: Path) -> None:
    a = GSM8KTask(gsm_dir, val_size=2, test_size=4, split_seed=1).problems("test")
    b = GSM8KTask(gsm_dir, val_size=2, test_size=4, split_seed=1).problems("test")
    assert len(a) == 4 and [p.id for p in a] == [p.id for p in b]
    assert {p.id for p in a} <= {f"gsm8k/test/{i}" for i in range(6)}
    with pytest.raises(ValueError, match="test_size is 7"):
        GSM8KTask(gsm_dir, val_size=2, test_size=7)
    with pytest.raises(ValueError, match="val_size is 20"):
        GSM8KTask(gsm_dir, val_size=20)


def test_ids_point_at_source_rows(gsm_dir: Path) -> None:
    task = GSM8KTask(gsm_dir, val_size=3)
    train_rows = _rows(GSM8K_FIXTURE)[:10]
    for p in task.problems("val"):
        index = int(p.id.rsplit("/", 1)[1])
        assert p.id.startswith("gsm8k/train/")
        assert p.prompt == train_rows[index]["question"]
    ids = [p.id for p in task.problems("val") + task.problems("test")] + [
        it.id for it in task._train
    ]
    assert len(ids) == len(set(ids))


def test_single_source_splits_are_disjoint_and_seeded(tmp_path: Path) -> None:
    rows = _rows(GSM8K_FIXTURE)
    dup = dict(rows[2], question=rows[2]["question"].lower())
    path = _write(tmp_path / "pool.jsonl", [*rows, dup])
    task = GSM8KTask(path, val_size=4, test_size=5, split_seed=3)
    val, test = task.problems("val"), task.problems("test")
    train = [it.id for it in task._train]
    assert len(val) == 4 and len(test) == 5 and len(train) == len(rows) - 9  # duplicate dropped
    assert f"gsm8k/pool/{len(rows)}" not in {p.id for p in val + test} | set(train)
    sets = [{p.id for p in val}, {p.id for p in test}, set(train)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    again = GSM8KTask(path, val_size=4, test_size=5, split_seed=3)
    assert [p.id for p in again.problems("test")] == [p.id for p in test]
    with pytest.raises(ValueError, match="single source"):
        GSM8KTask(path, val_size=4, test_size=None)
    with pytest.raises(ValueError, match="distinct rows"):
        GSM8KTask(path, val_size=10, test_size=10)


def test_bad_arguments_are_refused(gsm_dir: Path) -> None:
    for kwargs, match in [
        ({"val_size": 0}, "val_size"),
        ({"test_size": 0}, "test_size"),
        ({"skills": "gold"}, "no gold skill labels"),
        ({"skills": "magic"}, "skills 'magic' is invalid: Input should be 'gold', 'none'"),
        ({"skills": "discovered"}, "needs an 'llm'"),
        ({"keep_calculator": "yes"}, "keep_calculator"),
    ]:
        with pytest.raises(ValueError, match=match):
            GSM8KTask(gsm_dir, **{"val_size": 2, **kwargs})
    task = GSM8KTask(gsm_dir, val_size=2)
    with pytest.raises(ValueError, match="split must be"):
        task.problems("train")  # type: ignore[arg-type]


def test_hub_loading_needs_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ValueError, match="'datasets' package"):
        GSM8KTask(None)


def test_hub_loading_uses_the_subclass_names(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    rows = _rows(GSM8K_FIXTURE)

    def load_dataset(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
        calls.append((name, config, split))
        return rows[:10] if split == "train" else rows[10:]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = GSM8KTask(None, val_size=2)
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert len(task.problems("test")) == 6 and task.problems("test")[0].id == "gsm8k/test/0"


def test_skills_none_mapping_and_slugs(gsm_dir: Path) -> None:
    task = GSM8KTask(gsm_dir, val_size=3)
    assert task.leaf_skills == ["all"] and task.skills.leaves == ["all"]
    ids = [p.id for p in task.problems("val") + task.problems("test")]
    labels = {pid: ("Money & Shopping" if i % 2 else "rates/Time") for i, pid in enumerate(ids)}
    mapped = GSM8KTask(gsm_dir, val_size=3, skills=labels)
    assert mapped.leaf_skills == ["money_and_shopping", "rates/Time"]
    assert mapped.skills.roots == ["money_and_shopping", "rates"]
    assert {p.id: p.skill for p in mapped.problems("val")}[ids[1]] == "money_and_shopping"
    del labels[ids[0]]
    with pytest.raises(ValueError, match="lacks 1 val/test"):
        GSM8KTask(gsm_dir, val_size=3, skills=labels)
    assert slugify_skill("Counting & Probability") == "counting_and_probability"
    with pytest.raises(ValueError):
        slugify_skill(" ?! ")


def test_discovered_skills(gsm_dir: Path) -> None:
    calls: list[dict[str, Any]] = []

    class Labeller:
        """Leaves one val problem unlabelled; labels the rest by the answer's parity."""

        def label(self, problems: list[Any], **kwargs: Any) -> dict[str, str]:
            calls.append({"ids": [p.id for p in problems], **kwargs})
            out = {}
            for p in problems[1:]:
                even = int(float(p.metadata["final_answer"])) % 2 == 0
                out[p.id] = "Even answers" if even else "odd"
            return out

    task = GSM8KTask(
        gsm_dir,
        val_size=3,
        skills="discovered",
        llm=Labeller(),
        discovery={"max_skills": 4, "cache_dir": "/tmp/x"},
        discovery_train_items=5,
    )
    (call,) = calls
    assert call["max_skills"] == 4 and call["cache_dir"] == "/tmp/x" and call["dataset"] == "gsm8k"
    assert call["seed"] == task.split_seed
    evaluation = [p.id for p in task.problems("val") + task.problems("test")]
    assert call["ids"][: len(evaluation)] == evaluation
    extra = call["ids"][len(evaluation) :]
    assert len(extra) == 5 and set(extra) <= {it.id for it in task._train}
    assert task.problems("val")[0].skill == "other"
    assert set(task.leaf_skills) <= {"even_answers", "odd", "other"}
    # sample serves a discovered skill from the labelled train rows only.
    rng = np.random.default_rng(0)
    for skill in ("even_answers", "odd"):
        if skill in task.leaf_skills:
            got = task.sample(skill, 6, rng)
            assert got and all(p.id in extra and p.skill == skill for p in got)
            parity = 0 if skill == "even_answers" else 1
            assert all(int(float(p.metadata["final_answer"])) % 2 == parity for p in got)
    # "other" has no train rows: any train rows, marked as a fallback.
    fallback = task.sample("other", 3, rng)
    assert all(p.metadata.get("skill_fallback") and p.skill == "other" for p in fallback)
    with pytest.raises(ValueError, match=r"unknown option 'discovery\.rounds'; valid options: max"):
        GSM8KTask(gsm_dir, val_size=3, skills="discovered", llm=Labeller(), discovery={"rounds": 2})
    # A raw spec is not a labeller: the message says what builds one.
    with pytest.raises(ValueError, match="SkillDiscoverer"):
        GSM8KTask(gsm_dir, val_size=3, skills="discovered", llm={"model": "m"})


def test_sample_draws_only_train_pool(gsm_dir: Path) -> None:
    task = GSM8KTask(gsm_dir, val_size=3)
    evaluation = {p.id for p in task.problems("val") + task.problems("test")}
    eval_keys = {normalize_prompt(p.prompt) for p in task.problems("val") + task.problems("test")}
    got = task.sample("all", 50, np.random.default_rng(0))  # more than the pool: repeats
    assert len(got) == 50
    assert not {p.id for p in got} & evaluation
    assert not {normalize_prompt(p.prompt) for p in got} & eval_keys
    assert {p.id for p in got} == {it.id for it in task._train}
    small = task.sample("all", 4, np.random.default_rng(1))
    assert len({p.id for p in small}) == 4  # without replacement while the pool lasts
    assert [p.id for p in small] == [p.id for p in task.sample("all", 4, np.random.default_rng(1))]
    assert task.sample("all", 0, np.random.default_rng(1)) == []
    with pytest.raises(ValueError, match="not a leaf"):
        task.sample("algebra", 1, np.random.default_rng(0))


# -- GSM8K -----------------------------------------------------------------------------------


def test_gsm8k_problem_fields_and_scoring(gsm_dir: Path) -> None:
    task = GSM8KTask(gsm_dir, val_size=3)
    assert isinstance(task, Task) and task.name == "gsm8k"
    p = task.problems("test")[1]
    row = _rows(GSM8K_FIXTURE)[11]
    assert p.prompt == row["question"] and p.answer.endswith("#### 36")
    assert "<<" not in p.answer and "32 + 4 = 36" in p.answer
    assert p.metadata["final_answer"] == "36"
    kept = GSM8KTask(gsm_dir, val_size=3, keep_calculator=True).problems("test")[1]
    assert "<<50-18=32>>" in kept.answer
    problems = task.problems("test") + task.problems("val")
    assert task.score_batch(problems, [q.answer for q in problems]) == [True] * len(problems)
    wrong = [f"#### {float(q.metadata['final_answer']) + 1}" for q in problems]
    assert task.score_batch(problems, wrong) == [False] * len(problems)
    assert task.score(p, "So he has 36 chickens.") and task.score(p, "The answer is 36.00")
    assert not task.score(p, "") and not task.score(p, "thirty-six")
    neg = next(q for q in task.problems("test") if q.metadata["final_answer"] == "-7")
    assert task.score(neg, "#### -7") and not task.score(neg, "#### 7")
    comma = next(
        q
        for q in problems + task.sample("all", 40, np.random.default_rng(0))
        if q.metadata["final_answer"] == "6000"
    )
    assert task.score(comma, "He runs 6,000 meters.")
    with pytest.raises(ValueError, match="2 problems but 1 outputs"):
        task.score_batch(problems[:2], ["1"])


def test_gsm8k_verify_and_agreement(gsm_dir: Path) -> None:
    task = GSM8KTask(gsm_dir, val_size=3)
    verdicts = task.verify(
        [
            {"prompt": "How many?", "answer": "2 + 3 = 5\n#### 5"},
            {"prompt": "How many?", "answer": "2 + 3 = 5, so 5."},  # no marker
            {"prompt": "How many?", "answer": "#### none"},
            {"prompt": "  ", "answer": "#### 5"},
        ]
    )
    assert verdicts == [None, "no_final_answer", "no_final_answer", "empty_prompt"]
    assert task.answers_agree("x\n#### 1,200", "so 1200 in all")
    assert not task.answers_agree("#### 5", "#### 6")
    assert not task.answers_agree("#### 5", "no number")
    desc = task.format_description("all")
    assert "####" in desc
    assert not any(p.prompt[:40] in desc for p in task.problems("val") + task.problems("test"))


@pytest.mark.skipif(not (SHARED / "gsm8k" / "test.jsonl").exists(), reason="no shared GSM8K")
def test_real_gsm8k_gold_scores_all_and_val_misses_test() -> None:
    start = time.perf_counter()
    task = GSM8KTask(SHARED / "gsm8k")
    built = time.perf_counter() - start
    test, val = task.problems("test"), task.problems("val")
    assert len(test) == 1319 and len(val) == 256
    assert task.skipped_rows == {"train": 0, "test": 0}
    start = time.perf_counter()
    scores = task.score_batch(test, [p.answer for p in test])
    scored = time.perf_counter() - start
    print(f"\nGSM8K: build {built:.3f}s, score 1319 gold answers {scored:.3f}s")
    assert all(scores)
    # Scoring through the lenient reader too: the gold text, not the stored final answer.
    bare = [p.model_copy(update={"metadata": {}}) for p in test]
    assert all(task.score_batch(bare, [p.answer for p in test]))
    test_keys = {normalize_prompt(p.prompt) for p in test}
    assert not test_keys & {normalize_prompt(p.prompt) for p in val}
    assert not test_keys & {normalize_prompt(it.row.prompt) for it in task._train}
    assert built < 2.0


# -- MATH ------------------------------------------------------------------------------------


def test_math_gold_skills_and_levels() -> None:
    task = MATHTask(MATH_FIXTURE, val_size=8, test_size=10, split_seed=0)
    subjects = {
        "algebra",
        "counting_and_probability",
        "geometry",
        "intermediate_algebra",
        "number_theory",
        "prealgebra",
        "precalculus",
    }
    assert set(task.leaf_skills) <= subjects and len(task.leaf_skills) >= 4
    for p in task.problems("val") + task.problems("test"):
        assert p.skill == slugify_skill(p.metadata["subject"])
    leveled = MATHTask(MATH_FIXTURE, val_size=8, test_size=10, split_seed=0, by_level=True)
    for p in leveled.problems("val") + leveled.problems("test"):
        level = p.metadata["level"]
        suffix = f"level_{level}" if level is not None else "level_unknown"
        assert p.skill == f"{slugify_skill(p.metadata['subject'])}/{suffix}"
    assert set(leveled.skills.roots) == set(task.leaf_skills)
    none = MATHTask(MATH_FIXTURE, val_size=8, test_size=10, skills="none")
    assert none.leaf_skills == ["all"]


def test_math_gold_solutions_score_all_and_wrong_ones_none() -> None:
    task = MATHTask(MATH_FIXTURE, val_size=8, test_size=10, split_seed=0)
    problems = task.problems("val") + task.problems("test")
    assert len(problems) == 18
    assert task.score_batch(problems, [p.answer for p in problems]) == [True] * 18
    # Another problem's solution is wrong whenever its answer differs.
    rolled = problems[1:] + problems[:1]
    assert task.score_batch(problems, [q.answer for q in rolled]) == [False] * 18
    assert task.score_batch(problems, [r"\boxed{\text{no idea}}"] * 18) == [False] * 18
    assert task.score_batch(problems, ["I give up."] * 18) == [False] * 18


def test_math_scores_equivalent_spellings() -> None:
    task = MATHTask(MATH_FIXTURE, val_size=1, test_size=22, split_seed=0)
    by_answer = {p.metadata["final_answer"]: p for p in task.problems("test")}
    cases = {
        r"\frac{11}{2}": [
            r"\boxed{5.5}",
            r"so $y = \boxed{\dfrac{11}{2}}$.",
            "The answer is 11/2.",
        ],
        r"2\sqrt{2}": [r"\boxed{\sqrt{8}}", r"\boxed{2 \sqrt 2}"],
        r"40\text{ cm}^2": [r"\boxed{40}", r"\boxed{40 \text{ cm}^2}"],
        r"120^\circ": [r"\boxed{120}"],
        "(2,3)": [r"\boxed{\left(2, 3\right)}"],
        r"-2, 4": [r"\boxed{4, -2}", "#### 4,-2"],
        r"\left( 3, \frac{\pi}{2} \right)": [r"\boxed{(3, \pi/2)}"],
    }
    wrong = {"(2,3)": r"\boxed{[2,3]}", r"\frac{11}{2}": r"\boxed{5.55}", "(4,3)": r"\boxed{(3,4)}"}
    present = [a for a in cases if a in by_answer]
    assert len(present) >= 5
    for gold in present:
        for output in cases[gold]:
            assert task.score(by_answer[gold], output), (gold, output)
    for gold, output in wrong.items():
        if gold in by_answer:
            assert not task.score(by_answer[gold], output)


def test_math_rows_without_answer_and_given_answers(tmp_path: Path) -> None:
    rows = _rows(MATH_FIXTURE)[:6]
    rows[0] = dict(rows[0], solution="The answer is fourteen.")  # no box: skipped
    rows[1] = dict(rows[1], solution="Adding gives 11/2.", answer="\\frac{11}{2}")
    path = _write(tmp_path / "m.jsonl", rows)
    task = MATHTask(path, val_size=2, test_size=3)
    assert task.skipped_rows == {"pool": 1}
    every = (
        task.problems("val")
        + task.problems("test")
        + [task._problem(it, "x") for it in task._train]
    )
    assert "math/pool/0" not in {p.id for p in every}
    given = next(p for p in every if p.id == "math/pool/1")
    assert given.metadata["final_answer"] == "\\frac{11}{2}"
    assert task.score(given, r"\boxed{5.5}")
    with pytest.raises(ValueError, match="not a math row"):
        MATHTask(_write(tmp_path / "g.jsonl", _rows(GSM8K_FIXTURE)), val_size=2, test_size=3)


def test_math_verify_final_answer_and_description() -> None:
    task = MATHTask(MATH_FIXTURE, val_size=4, test_size=4)
    verdicts = task.verify(
        [
            {"prompt": "What is $1+1$?", "answer": r"It is $\boxed{2}$."},
            {"prompt": "What is $1+1$?", "answer": "The answer is 2."},
            {"prompt": "What is $1+1$?", "answer": r"It is $\boxed{}$."},
        ]
    )
    assert verdicts == [None, "no_final_answer", "no_final_answer"]
    assert task.final_answer("so the answer is $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert task.final_answer("x\n#### 7") == "7"
    assert task.final_answer("nothing") is None
    assert task.answers_agree(r"\boxed{0.5}", r"\boxed{\frac12}")
    assert not task.answers_agree(r"\boxed{0.5}", "no answer")
    desc = task.format_description("geometry")
    assert "\\boxed" in desc and "geometry" in desc
    assert "level 3" in task.format_description("algebra/level_3")


def test_math_two_source_dir(tmp_path: Path) -> None:
    rows = _rows(MATH_FIXTURE)
    _write(tmp_path / "m" / "train.jsonl.gz", rows[:15])
    _write(tmp_path / "m" / "test.jsonl", rows[15:])
    task = MATHTask(tmp_path / "m", val_size=4, test_size=None)
    assert [p.id for p in task.problems("test")] == [f"math/test/{i}" for i in range(8)]
    assert all(p.id.startswith("math/train/") for p in task.problems("val"))
    assert task.train_size == 11
    default = MATHTask(tmp_path / "m", val_size=4, test_size=5)
    assert len(default.problems("test")) == 5


def test_dataset_task_base_needs_a_subclass(gsm_dir: Path) -> None:
    with pytest.raises(NotImplementedError):
        DatasetTask(gsm_dir, val_size=2)
