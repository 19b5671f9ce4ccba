"""Decontamination beyond exact match: the n-gram and overlap rules of ``ExampleFilter``.

Two sets of evaluation prompts: real GSM8K test questions (skipped when
``../shared/data`` is absent) and the self-written word problems in
``tests/fixtures/decontamination.jsonl``, so the same claims are checked
without the shared data. The paraphrases and same-topic questions below are
written for these tests; each pair is "a copy the rules must catch" against
"a new question they must keep".
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from teachgym.agents.generators import GenerationContext, ProceduralGenerator
from teachgym.envs import ArithmeticTask
from teachgym.envs.filtering import ExampleFilter, tokenize
from teachgym.types import Allocation, Example, Provenance

FIXTURE = Path(__file__).parent / "fixtures" / "decontamination.jsonl"
GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
SRC = Provenance(generator="test")

# --- GSM8K: paraphrases of real test questions -------------------------------------------------

#: Test question 0 (Janet's ducks), rewritten at the start and end but keeping
#: the middle sentence's long run of words: "bakes muffins for her friends
#: every day with four she sells the remainder at the farmers market ..."
GSM8K_JANET_LIGHT = (
    "Janet owns ducks that lay 16 eggs each day. Every morning she has three for breakfast and "
    "bakes muffins for her friends every day with four. She sells the remainder at the farmers' "
    "market daily for $2 per fresh duck egg. What are her daily earnings?"
)
#: The same question reworded throughout: every number and most words kept,
#: no run of 13 tokens in common.
GSM8K_JANET_HEAVY = (
    "Every day Janet's ducks lay 16 eggs. Each morning she eats three of them for breakfast, and "
    "every day she uses four to bake muffins for her friends. The rest she sells at the farmers' "
    "market for $2 per fresh duck egg. How many dollars does she make each day at the market?"
)
#: Test question 6 (Toulouse's sheep) reworded the same way.
GSM8K_SHEEP_HEAVY = (
    "Toulouse has two times as many sheep as Charleston, and Charleston has 4 times as many sheep "
    "as Seattle. If Seattle has 20 sheep, how many sheep do Toulouse, Charleston and Seattle have "
    "in total?"
)
#: New questions on the topics of test questions 0, 2 and 7.
GSM8K_SAME_TOPIC = [
    "Maria's hens lay 12 eggs each day. She gives 5 eggs to her neighbor and keeps the rest. "
    "How many eggs does she keep in a week?",
    "A farmer sells duck eggs at the farmers' market for $3 per dozen. He sold 14 dozen on "
    "Saturday and 9 dozen on Sunday. How much money did he make over the weekend?",
    "Tom buys a house for $120,000. He spends $30,000 on repairs and sells the house for "
    "$200,000. How much profit does he make?",
    "A file is 500 MB. Lisa downloads it at 10 MB per second. How many seconds does it take to "
    "download the file?",
]

# --- Fixture: paraphrases of the self-written problems -------------------------------------------

#: Of "ducks": keeps "she uses 5 eggs a day for baking and sells the rest at
#: the market for 0 75 per egg" (18 tokens).
FIX_LIGHT = (
    "Rosa has 9 ducks. Each duck lays 2 eggs a day. She uses 5 eggs a day for baking and sells "
    "the rest at the market for $0.75 per egg. What does she earn weekly?"
)
#: Of "ducks", "garden" and "pool": reworded throughout, numbers and most words
#: kept, no shared run of 11 tokens.
FIX_HEAVY = {
    "ducks": "Each morning Rosa collects the eggs from her 9 ducks; every duck lays 2 eggs a day. "
    "She uses 5 of the eggs daily for baking and sells the rest at the market at $0.75 an egg. "
    "How much money does Rosa make each week?",
    "garden": "In his garden Oliver plants tomatoes in 6 rows with 11 plants in each. Every plant "
    "gives 4 tomatoes each week. He eats 20 of the tomatoes a week and sells the others for 50 "
    "cents each. How much money does he make in a week?",
    "pool": "A swimming pool can hold 12,000 gallons of water. A hose fills it at a rate of 8 "
    "gallons per minute, but a leak drains 2 gallons every minute. How many hours will it take "
    "to fill the pool if it starts empty?",
}
#: New questions on the topics of "ducks", "garden", "pool" and "bakery".
FIX_SAME_TOPIC = [
    "A farmer has 14 hens that each lay 5 eggs a week. He packs the eggs in cartons of 12. "
    "How many full cartons can he fill in 4 weeks?",
    "Maya's garden has 3 rows of carrots with 15 carrots in each row. Rabbits eat 7 carrots. "
    "How many carrots are left for Maya to harvest in her garden?",
    "Ella swims 16 lengths of a 25 meter pool every morning and 10 lengths every evening. "
    "How many meters does she swim in a week?",
    "A bakery makes 240 cookies a day and sells them in boxes of 6 for $4 a box. How much money "
    "does the bakery make if it sells every box in 5 days?",
]
#: Shares exactly ten consecutive tokens with "bakery" ("sells croissants for
#: 3 each and muffins for 2 each"): preceded by "shop", not "bakery", and
#: followed by "during", not "on".
FIX_TEN = (
    "A small shop sells croissants for $3 each and muffins for $2 each during the winter. Zoe "
    "wants 7 items of one kind; what is the least she can spend?"
)


def fixture_problems() -> dict[str, str]:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    return {row["id"]: row["question"] for row in rows}


def gsm8k_test() -> list[str]:
    if not GSM8K_TEST.exists():
        pytest.skip(f"GSM8K not found at {GSM8K_TEST}")
    return [json.loads(line)["question"] for line in GSM8K_TEST.read_text().splitlines()]


@pytest.fixture(scope="module")
def fixture_filter() -> ExampleFilter:
    return ExampleFilter(fixture_problems().values())


@pytest.fixture(scope="module")
def gsm8k() -> tuple[list[str], ExampleFilter]:
    questions = gsm8k_test()
    return questions, ExampleFilter(questions)


def examples(prompts: list[str], skill: str = "word") -> list[Example]:
    return [Example(prompt=p, completion="1", skill=skill, source=SRC) for p in prompts]


def longest_shared_run(a: str, b: str) -> int:
    """Longest common run of tokens, by dynamic programming (the tests' own reference)."""
    x, y = tokenize(a), tokenize(b)
    best, prev = 0, [0] * (len(y) + 1)
    for i in range(len(x)):
        cur = [0] * (len(y) + 1)
        for j in range(len(y)):
            if x[i] == y[j]:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


# --- Tokens -------------------------------------------------------------------------------------


def test_tokens_ignore_case_punctuation_and_underscores() -> None:
    assert tokenize("Janet’s DUCKS lay 16 eggs/day; $2 each!") == [
        "janet",
        "s",
        "ducks",
        "lay",
        "16",
        "eggs",
        "day",
        "2",
        "each",
    ]
    assert tokenize("filter_by_prefix(Strings)") == ["filter", "by", "prefix", "strings"]
    assert tokenize("Straße ÉTÉ") == ["strasse", "été"]
    assert tokenize("12+34=") == ["12", "34"] and tokenize("+ = ?") == []


def test_recased_repunctuated_copy_is_caught(fixture_filter: ExampleFilter) -> None:
    """Not an exact copy after normalize_prompt (punctuation differs), but the same tokens."""
    original = fixture_problems()["library"]
    copy = original.upper().replace(",", "").replace(".", " ;").replace("?", "")
    assert copy.lower() != original.lower()
    assert fixture_filter.contamination(copy) == "contaminated_ngram"
    assert fixture_filter.contamination(original.upper()) == "contaminated"


# --- GSM8K --------------------------------------------------------------------------------------


def test_gsm8k_light_paraphrase_is_caught_by_the_ngram_rule(gsm8k) -> None:
    questions, filt = gsm8k
    assert questions[0].startswith("Janet’s ducks lay 16 eggs per day.")
    assert longest_shared_run(GSM8K_JANET_LIGHT, questions[0]) >= 13
    assert filt.contamination(GSM8K_JANET_LIGHT) == "contaminated_ngram"


def test_gsm8k_heavy_paraphrases_are_caught_by_the_overlap_rule(gsm8k) -> None:
    questions, filt = gsm8k
    assert questions[6].startswith("Toulouse has twice as many sheep as Charleston.")
    for paraphrase, original in ((GSM8K_JANET_HEAVY, 0), (GSM8K_SHEEP_HEAVY, 6)):
        assert longest_shared_run(paraphrase, questions[original]) < 13
        assert filt.contamination(paraphrase) == "contaminated_overlap"
    no_overlap = ExampleFilter(questions, overlap=None)
    assert no_overlap.contamination(GSM8K_JANET_HEAVY) is None


def test_gsm8k_new_questions_are_kept(gsm8k) -> None:
    questions, filt = gsm8k
    for prompt in GSM8K_SAME_TOPIC:
        assert filt.contamination(prompt) is None, prompt
    # Real, independently written questions: the first 100 test questions
    # against a filter built from the other 1,219. One of them (33: "Gretchen
    # has 110 coins", a variant of another test item) is a near-copy; a loose
    # rule would reject many.
    held_out = ExampleFilter(questions[100:])
    flagged = [i for i, q in enumerate(questions[:100]) if held_out.contamination(q)]
    assert len(flagged) <= 2, flagged
    assert held_out.contamination(questions[3]) is None  # James's sprints
    assert filt.contamination(questions[3]) == "contaminated"


# --- The same claims on the fixture -------------------------------------------------------------


def test_fixture_light_paraphrase_is_caught_by_the_ngram_rule(
    fixture_filter: ExampleFilter,
) -> None:
    assert longest_shared_run(FIX_LIGHT, fixture_problems()["ducks"]) >= 13
    assert fixture_filter.contamination(FIX_LIGHT) == "contaminated_ngram"


@pytest.mark.parametrize("key", sorted(FIX_HEAVY))
def test_fixture_heavy_paraphrase_is_caught_by_the_overlap_rule(
    fixture_filter: ExampleFilter, key: str
) -> None:
    paraphrase = FIX_HEAVY[key]
    assert longest_shared_run(paraphrase, fixture_problems()[key]) <= 10
    assert fixture_filter.contamination(paraphrase) == "contaminated_overlap"


def test_fixture_new_questions_on_the_same_topics_are_kept(fixture_filter: ExampleFilter) -> None:
    for prompt in FIX_SAME_TOPIC:
        assert len(tokenize(prompt)) >= fixture_filter.overlap_min_tokens  # the rule does judge it
        assert fixture_filter.contamination(prompt) is None, prompt


def test_fixture_problem_is_kept_by_a_filter_built_without_it() -> None:
    problems = fixture_problems()
    for key, question in problems.items():
        others = [q for k, q in problems.items() if k != key]
        assert ExampleFilter(others).contamination(question) is None, key


# --- Configuration ------------------------------------------------------------------------------


def test_ngram_size_is_configurable() -> None:
    evals = fixture_problems().values()
    assert longest_shared_run(FIX_TEN, fixture_problems()["bakery"]) == 10
    assert ExampleFilter(evals, ngram=10, overlap=None).contamination(FIX_TEN) == (
        "contaminated_ngram"
    )
    assert ExampleFilter(evals, ngram=11, overlap=None).contamination(FIX_TEN) is None
    assert ExampleFilter(evals, ngram=13, overlap=None).contamination(FIX_TEN) is None
    assert ExampleFilter(evals).contamination(FIX_TEN) is None  # nor by overlap


def test_ngram_rule_sees_a_prompt_exactly_n_tokens_long() -> None:
    """A prompt that IS a shared run (no tokens around it): the window at both ends counts."""
    evals = fixture_problems()
    tail = " ".join(tokenize(evals["stamps"])[-13:])
    filt = ExampleFilter(evals.values(), overlap=None)
    assert len(tokenize(tail)) == 13
    assert filt.contamination(tail) == "contaminated_ngram"
    assert ExampleFilter(evals.values(), ngram=14, overlap=None).contamination(tail) is None


def test_overlap_threshold_and_min_tokens_are_configurable() -> None:
    evals = fixture_problems().values()
    heavy = FIX_HEAVY["garden"]
    assert ExampleFilter(evals, overlap=0.45).contamination(heavy) == "contaminated_overlap"
    assert ExampleFilter(evals, overlap=0.95).contamination(heavy) is None
    assert ExampleFilter(evals, overlap_min_tokens=100).contamination(heavy) is None
    # A same-topic question is rejected only by a much looser threshold.
    assert ExampleFilter(evals, overlap=0.05).contamination(FIX_SAME_TOPIC[1]) == (
        "contaminated_overlap"
    )


def test_none_disables_each_rule() -> None:
    evals = list(fixture_problems().values())
    no_ngram = ExampleFilter(evals, ngram=None, overlap=None)
    assert no_ngram.contamination(FIX_LIGHT) is None
    # With only the n-gram rule off, the overlap rule still sees the light copy.
    assert ExampleFilter(evals, ngram=None).contamination(FIX_LIGHT) == "contaminated_overlap"
    no_overlap = ExampleFilter(evals, overlap=None)
    assert all(no_overlap.contamination(p) is None for p in FIX_HEAVY.values())
    assert no_overlap.contamination(FIX_LIGHT) == "contaminated_ngram"
    # Exact copies are rejected whatever the settings.
    assert no_ngram.contamination(" " + evals[0].upper()) == "contaminated"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ngram": 0}, "ngram 0 is invalid: Input should be greater than or equal to 1"),
        ({"ngram": -3}, "ngram -3 is invalid: Input should be greater than or equal to 1"),
        ({"ngram": 12.5}, "ngram 12.5 is invalid: Input should be a valid integer"),
        ({"ngram": "13"}, "ngram '13' is invalid: Input should be a valid integer"),
        ({"ngram": True}, "ngram True is invalid: Input should be a valid integer"),
        ({"overlap": 0}, "overlap 0 is invalid: Input should be greater than 0"),
        ({"overlap": 1.5}, "overlap 1.5 is invalid: Input should be less than or equal to 1"),
        ({"overlap": -0.2}, "overlap -0.2 is invalid: Input should be greater than 0"),
        ({"overlap": math.nan}, "overlap nan is invalid: Input should be a finite number"),
        ({"overlap": "0.5"}, "overlap '0.5' is invalid: Input should be a valid number"),
        ({"overlap": True}, "overlap True is invalid: Input should be a valid number"),
        ({"overlap_min_tokens": 0}, "overlap_min_tokens 0 is invalid: Input should be greater"),
        ({"overlap_min_tokens": None}, "overlap_min_tokens None is invalid: Input should be a"),
        ({"ngrams": 5}, "unknown option 'ngrams'; did you mean 'ngram'\\? valid options: ngram=13"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExampleFilter(["What is 2+3?"], **kwargs)


# --- Through the filter call: reasons and the arithmetic default --------------------------------


def test_reasons_reported_by_the_filter_call(fixture_filter: ExampleFilter) -> None:
    evals = fixture_problems()
    made = examples(
        [
            evals["pizza"].lower(),  # exact copy after normalization
            FIX_LIGHT,
            FIX_HEAVY["pool"],
            FIX_SAME_TOPIC[0],
            FIX_SAME_TOPIC[0],  # a duplicate within the step
        ]
    )
    accepted, rejected = fixture_filter(made, {"word"}, cap=10)
    assert [e.prompt for e in accepted] == [FIX_SAME_TOPIC[0]]
    assert rejected == {
        "word": Counter(
            {"contaminated": 1, "contaminated_ngram": 1, "contaminated_overlap": 1, "duplicate": 1}
        )
    }


def test_excluded_and_commit_keep_their_meaning() -> None:
    """``excluded`` lists exact keys only; a near-copy is absent from it yet still rejected."""
    evals = fixture_problems()
    filt = ExampleFilter(evals.values(), dedup="episode")
    batch: set[str] = set()
    accepted, _ = filt(examples([FIX_SAME_TOPIC[2], FIX_LIGHT]), {"word"}, 10, batch)
    assert [e.prompt for e in accepted] == [FIX_SAME_TOPIC[2]]
    normalized_evals = {" ".join(q.lower().split()) for q in evals.values()}
    key = " ".join(FIX_SAME_TOPIC[2].lower().split())
    assert batch == {key}
    assert filt.excluded(batch) == frozenset(normalized_evals | {key})
    assert " ".join(FIX_LIGHT.lower().split()) not in filt.excluded(batch)
    assert filt.seen == set()  # the call alone does not commit
    filt.commit(accepted)
    assert filt.seen == {key}
    again, rejected = filt(examples([FIX_SAME_TOPIC[2]]), {"word"}, 10)
    assert again == [] and rejected == {"word": Counter({"duplicate": 1})}


ARITH_EVAL = ["12+34=", "34+56=", "7*8=", "345-123=", "12<34?"]


def test_arithmetic_prompts_that_differ_from_eval_prompts_are_kept() -> None:
    filt = ExampleFilter(ARITH_EVAL, alphabet="0123456789+-*=<>?")
    near = ["12+35=", "34+12=", "13+34=", "56+34=", "8*7=", "345-124=", "12>34?", "12+34+56="]
    accepted, rejected = filt(examples(near, "add"), {"add"}, 100)
    assert [e.prompt for e in accepted] == near and rejected == {}
    copies = ["12+34=", "7*8=", "345-123="]
    accepted, rejected = filt(examples(copies, "add"), {"add"}, 100)
    assert accepted == [] and rejected == {"add": Counter({"contaminated": 3})}


def test_min_tokens_is_what_protects_arithmetic() -> None:
    """Without the length floor the overlap rule would reject an operand swap."""
    loose = ExampleFilter(ARITH_EVAL, overlap_min_tokens=1)
    assert loose.contamination("34+12=") == "contaminated_overlap"
    assert ExampleFilter(ARITH_EVAL).contamination("34+12=") is None


def test_default_arithmetic_step_is_filtered_exactly_as_before() -> None:
    """A 6,000-example step of the default task: same accepted and rejected with the new rules
    on as with them off (exact decontamination and duplicates only)."""
    task = ArithmeticTask()
    evals = [p.prompt for p in task.problems("val") + task.problems("test")]
    skills = list(task.leaf_skills)
    plan = Allocation(counts={s: 6000 // len(skills) for s in skills})
    context = GenerationContext(
        step=0, rng=np.random.default_rng(0), max_examples=6000, skills=skills, task=task
    )
    made, _ = ProceduralGenerator(task, seed=0).generate(plan, context)
    assert len(made) > 5000
    new = ExampleFilter(evals, task.alphabet)(made, set(skills), 10_000)
    old = ExampleFilter(evals, task.alphabet, ngram=None, overlap=None)(made, set(skills), 10_000)
    assert new == old
    assert sum(c["contaminated"] for c in new[1].values()) > 0  # exact copies still rejected


# --- The pruned search against a brute-force reference ------------------------------------------


def reference_ratio(prompt: str, evals: list[str]) -> float:
    """The module docstring's overlap ratio, computed directly: IDF-weighted share of the
    prompt's distinct tokens and token pairs found in the best single evaluation prompt."""

    def grams(text: str) -> set[tuple[str, ...]]:
        toks = tokenize(text)
        return {(t,) for t in toks} | set(pairwise(toks))

    docs = [grams(" ".join(e)) for e in dict.fromkeys(tuple(tokenize(e)) for e in evals) if e]
    df = Counter(g for d in docs for g in d)
    n = len(docs)
    query = grams(prompt)
    weight = {g: math.log(1 + (n - df[g] + 0.5) / (df[g] + 0.5)) for g in query}
    total = sum(weight.values())
    return max(sum(weight[g] for g in query & d) / total for d in docs)


def test_pruned_overlap_search_matches_brute_force() -> None:
    evals = list(fixture_problems().values())
    vocab = sorted({t for e in evals for t in tokenize(e)})
    rng = random.Random(0)
    queries = []
    for _ in range(150):
        toks = tokenize(rng.choice(evals))
        keep = rng.uniform(0.2, 1.0)
        queries.append(
            " ".join(
                t if rng.random() < keep else rng.choice([*vocab, "novel", "words"]) for t in toks
            )
        )
    ratios = [reference_ratio(q, evals) for q in queries]
    for threshold in (0.3, 0.45, 0.6, 0.8):
        filt = ExampleFilter(evals, ngram=None, overlap=threshold)
        got = [filt.contamination(q) == "contaminated_overlap" for q in queries]
        want = [r >= threshold for r in ratios]
        assert got == want, threshold
        assert 10 < sum(want) < len(want) - 10  # both sides of the threshold are exercised


# --- the env: the config's `decontamination` reaches the filter -------------------------------


class _NullStudent:
    """Answers nothing and learns nothing: only the filter's verdicts matter here."""

    def train(self, examples: list[Example]) -> dict[str, float]:
        return {"loss": 0.0, "steps": 0, "tokens": 0}

    def predict(self, problems: list) -> list[str]:
        return [""] * len(problems)

    def save(self, path: object) -> None: ...

    def load(self, path: object) -> None: ...

    def reset(self) -> None: ...


class _NearCopies:
    """Each val question with its first word changed, plus one fresh question."""

    name = "near_copies"

    def generate(self, plan, context):
        val = context.task.problems("val")
        made = [
            Example(prompt="Also " + p.prompt, completion="#### 1", skill="all", source=SRC)
            for p in val
        ]
        fresh = "A gardener plants 7 rows of 9 tulips and 3 rows of 4 roses. How many flowers?"
        made.append(Example(prompt=fresh, completion="#### 75", skill="all", source=SRC))
        return made[: context.max_examples], {}


@pytest.mark.parametrize("rules", ["on", "off"])
def test_env_applies_the_configured_decontamination(rules: str) -> None:
    from teachgym.assembly import make_env
    from teachgym.envs.tasks.gsm8k import GSM8KTask

    task = GSM8KTask(
        Path(__file__).parent / "fixtures" / "gsm8k_small.jsonl", val_size=4, test_size=4
    )
    off = {"ngram": None, "overlap": None}
    env = make_env(
        "teachgym/SkillList-v0",
        task=task,
        student=_NullStudent(),
        generator=_NearCopies(),
        budget=20,
        examples_per_step=20,
        max_steps=1,
        decontamination=off if rules == "off" else {},
    )
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(len(env.skills), dtype=np.float32))
    n_val = len(task.problems("val"))
    if rules == "on":
        assert info["examples_accepted"] == 1
        assert (
            sum(info["rejected"].get(r, 0) for r in ("contaminated_ngram", "contaminated_overlap"))
            >= n_val  # every round of the step regenerates them, and every round drops them
        )
    else:
        assert info["examples_accepted"] == n_val + 1
        assert not {"contaminated_ngram", "contaminated_overlap"} & set(info["rejected"])
    env.close()
