"""Core types, the arithmetic task, the skill tree and the procedural generator."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from teachgym.agents.generators.base import GenerationContext
from teachgym.agents.generators.procedural import ProceduralGenerator, parse_text_plan
from teachgym.envs.skills import SkillTree
from teachgym.envs.tasks.arithmetic import DEFAULT_SKILLS, FAMILIES, ArithmeticTask
from teachgym.envs.tasks.base import ProceduralTask, Task
from teachgym.errors import ConfigError
from teachgym.types import (
    Allocation,
    Example,
    Problem,
    Provenance,
    SkillStats,
    TextPlan,
    TreeAction,
    normalize_prompt,
)


def test_invalid_values_name_the_field_and_value():
    with pytest.raises(ValidationError) as err:
        Allocation(counts={"add/carry": -3})
    assert "add/carry" in str(err.value) and "-3" in str(err.value)
    with pytest.raises(ValidationError, match="skill"):
        Problem(id="p", skill="bad skill!", prompt="1+1=", answer="2")
    with pytest.raises(ValidationError, match="correct=5 exceeds total=3"):
        SkillStats(skill="a", correct=5, total=3)
    with pytest.raises(ValidationError, match="at least one new subskill"):
        TreeAction(kind="explore", skill="add")
    with pytest.raises(ValidationError, match="cannot add subskills"):
        TreeAction(kind="exploit", skill="add", new_subskills=["x"])
    with pytest.raises(ValidationError, match="text"):
        TextPlan(text="")
    with pytest.raises(ValidationError, match="frozen"):
        Problem(id="p", skill="a", prompt="x", answer="y").answer = "z"  # type: ignore[misc]


def test_example_id_is_derived_from_content():
    src = Provenance(generator="g")
    a = Example(prompt="1+1=", completion="2", skill="add", source=src)
    b = Example(prompt="1+1=", completion="2", skill="add", source=Provenance(generator="h"))
    c = Example(prompt="1+2=", completion="3", skill="add", source=src)
    assert a.id == b.id != c.id and len(a.id) == 16


def test_allocation_clamped_keeps_proportions_with_exact_integers():
    alloc = Allocation(counts={"a": 3 * 10**40, "b": 10**40, "c": 0})
    assert alloc.clamped(100).counts == {"a": 75, "b": 25, "c": 0}
    assert alloc.clamped(7).total == 7
    small = Allocation(counts={"a": 2, "b": 1})
    assert small.clamped(3) is small and small.clamped(1000) is small
    assert Allocation(counts={"a": 5, "b": 5}).clamped(0).counts == {"a": 0, "b": 0}
    with pytest.raises(ValueError, match="cap must be >= 0"):
        small.clamped(-1)


def test_allocation_from_weights_sums_exactly():
    alloc = Allocation.from_weights(["a", "b", "c"], [1, 1, 1], 100)
    assert alloc.total == 100 and sorted(alloc.counts.values()) == [33, 33, 34]
    assert Allocation.from_weights(["a", "b"], [0, 0], 9).counts == {"a": 5, "b": 4}
    assert Allocation.from_weights(["a", "b"], [3, 1], 8).counts == {"a": 6, "b": 2}
    with pytest.raises(ValueError, match="expected 2 weights"):
        Allocation.from_weights(["a", "b"], [1], 8)
    with pytest.raises(ValueError, match="'b' is inf"):
        Allocation.from_weights(["a", "b"], [1, float("inf")], 8)


def test_normalize_prompt():
    assert normalize_prompt("  12 +  3= ") == normalize_prompt("12 + 3=") == "12 + 3="


def test_skill_tree():
    tree = SkillTree(["a/b/c", "a/d"])
    assert tree.nodes == ["a", "a/b", "a/b/c", "a/d"]
    assert tree.leaves_under("a") == ["a/b/c", "a/d"] and tree.parent("a/b/c") == "a/b"
    assert SkillTree.from_list(tree.to_list()).leaves == tree.leaves
    with pytest.raises(KeyError):
        tree.children("x")
    with pytest.raises(ValueError):
        tree.add("a//b")


def test_arithmetic_splits_fixed_disjoint_and_correct():
    task = ArithmeticTask()
    assert isinstance(task, Task) and isinstance(task, ProceduralTask)
    assert len(task.skills.roots) >= 3 and len(task.skills.leaves) >= 6
    val, test = task.problems("val"), task.problems("test")
    assert len(val) == len(test) == len(task.leaf_skills) * 128
    assert not {p.prompt for p in val} & {p.prompt for p in test}
    assert [p.prompt for p in ArithmeticTask().problems("val")] == [p.prompt for p in val]
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    for p in val + test:
        if p.skill.startswith("cmp"):
            x, y = map(int, p.prompt[:-1].split("?"))
            assert p.answer == ("<" if x < y else ">" if x > y else "=")
            continue
        op = next(o for o in ops if o in p.prompt)
        x, y = map(int, p.prompt[:-1].split(op))
        assert p.answer[::-1] == str(ops[op](x, y)), p  # least significant digit first
        assert set(p.prompt + p.answer) <= set(task.alphabet)


def _carries(x: int, y: int) -> bool:
    return any(int(a) + int(b) >= 10 for a, b in zip(str(x)[::-1], str(y)[::-1], strict=False))


def _borrows(x: int, y: int) -> bool:
    return any(int(a) < int(b) for a, b in zip(str(x)[::-1], str(y)[::-1], strict=False))


def test_every_family_draws_what_its_name_says():
    rng = np.random.default_rng(0)
    task = ArithmeticTask(skills=list(FAMILIES), answer_order="msd_first")
    for skill in FAMILIES:
        root, _, kind = skill.partition("/")
        digits = 3 if kind in ("3d", "3x1") else 2
        if kind.endswith("_3d"):
            digits = 3
        elif kind.endswith("_4d"):
            digits = 4
        for p in task.sample(skill, 300, rng):
            op = {"add": "+", "sub": "-", "mul": "*", "cmp": "?"}[root]
            x, y = map(int, p.prompt[:-1].split(op))
            if root == "mul":
                assert len(str(x)) == digits and 2 <= y <= 9 and p.answer == str(x * y)
                continue
            assert len(str(x)) == len(str(y)) == digits, (skill, p)
            if root == "add":
                assert _carries(x, y) == ("no_carry" not in kind) and p.answer == str(x + y)
            elif root == "sub":
                assert x >= y and p.answer == str(x - y)
                assert _borrows(x, y) == ("no_borrow" not in kind), (skill, p)
            else:
                assert p.answer == ("<" if x < y else ">" if x > y else "=")
    # Comparison pairs often share leading digits, so the first digit alone rarely decides.
    cmp = [p.prompt for p in task.sample("cmp/3d", 2000, rng)]
    assert sum(a[0] == a[4] for a in cmp) > 0.5 * len(cmp)
    # A problem space far larger than the evaluation sets, even for the smallest skill.
    prompts = {p.prompt for p in task.sample("mul/2x1", 20_000, rng)}
    assert len(prompts) == 720 > 5 * (64 + 64)


def test_arithmetic_pad_operands_writes_the_same_problems():
    padded = ArithmeticTask(val_per_skill=16, test_per_skill=16, pad_operands=True)
    natural = ArithmeticTask(val_per_skill=16, test_per_skill=16)
    assert padded.pad_operands and not natural.pad_operands
    widths = set()
    for a, b in zip(natural.problems("val"), padded.problems("val"), strict=True):
        op = next(c for c in "+-?" if c in a.prompt)
        # Every operand takes 3 characters (the longest default operand), so each digit
        # sits at the same offset from "=" in every skill.
        x, y = b.prompt[:-1].split(op)
        widths.add((len(x), len(y)))
        assert list(map(int, a.prompt[:-1].split(op))) == [int(x), int(y)]
        assert a.answer == b.answer and a.skill == b.skill
    assert widths == {(3, 3)}
    assert any(len(p.prompt) < len("047+085=") for p in natural.problems("val"))
    # The width follows the chosen skills: 2-digit skills alone need no padding.
    two = ArithmeticTask(
        skills=["add/carry", "sub/borrow"], val_per_skill=4, test_per_skill=4, pad_operands=True
    )
    assert all(len(p.prompt) == len("47+85=") for p in two.problems("test"))
    sample = ArithmeticTask(skills=["add/carry", "add/carry_4d"], pad_operands=True).sample(
        "add/carry", 50, np.random.default_rng(0)
    )
    assert all(len(p.prompt) == len("0047+0085=") for p in sample)
    with pytest.raises(ValueError, match="pad_operands 'yes' is invalid: Input should be a"):
        ArithmeticTask(pad_operands="yes")  # type: ignore[arg-type]


def test_arithmetic_errors():
    with pytest.raises(ValueError, match="unknown arithmetic skills"):
        ArithmeticTask(skills=["div/exact"])
    with pytest.raises(ValueError, match="split must be"):
        ArithmeticTask().problems("train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a leaf"):
        ArithmeticTask(skills=["add/carry"]).sample("mul/2x1", 1, np.random.default_rng(0))


def _ctx(task, skills, seed=0):
    return GenerationContext(
        step=0, rng=np.random.default_rng(seed), max_examples=10_000, skills=skills, task=task
    )


def test_procedural_generator_serves_every_plan_kind():
    task = ArithmeticTask(skills=[*DEFAULT_SKILLS, "mul/2x1"])
    gen = ProceduralGenerator(task, seed=0)
    examples, rejected = gen.generate(
        Allocation(counts={"add/carry": 5, "cmp/3d": 3}), _ctx(task, task.leaf_skills)
    )
    assert [e.skill for e in examples].count("add/carry") == 5 and len(examples) == 8
    assert rejected == {} and all(e.source.generator == "procedural" for e in examples)
    examples, _ = gen.generate(TextPlan(text="borrow: 4"), _ctx(task, task.leaf_skills))
    assert {e.skill for e in examples} == {"sub/borrow"} and len(examples) == 4
    examples, rejected = gen.generate(TextPlan(text="hello"), _ctx(task, task.leaf_skills))
    assert examples == [] and rejected == {"unparsed_plan": 1}
    # An inner node spreads over its leaves; an invented leaf uses its ancestor.
    examples, _ = gen.generate(
        Allocation(counts={"add": 6, "mul/2x1/by9": 2}), _ctx(task, ["add", "mul/2x1/by9"])
    )
    assert sorted(e.skill for e in examples) == [
        *["add/carry"] * 2,
        *["add/carry_3d"] * 2,
        *["add/no_carry"] * 2,
        *["mul/2x1/by9"] * 2,
    ]
    examples, rejected = gen.generate(Allocation(counts={"div/x": 3}), _ctx(task, ["div/x"]))
    assert examples == [] and rejected == {"no_procedure": 3}


def test_procedural_generator_distinct_prompts_and_exhaustion():
    task = ArithmeticTask(skills=[*DEFAULT_SKILLS, "mul/2x1"])
    gen = ProceduralGenerator(task)
    examples, rejected = gen.generate(
        Allocation(counts={"mul/2x1": 1000}), _ctx(task, task.leaf_skills)
    )
    # 720 prompts exist; a bounded number of draws finds nearly all of them.
    assert len({e.prompt for e in examples}) == len(examples)
    assert 700 <= len(examples) <= 720
    assert rejected == {"space_exhausted": 1000 - len(examples)}


def test_procedural_generator_is_seeded():
    task = ArithmeticTask()
    gen = ProceduralGenerator(task)
    plan = Allocation(counts={"add/carry": 20})
    a, _ = gen.generate(plan, _ctx(task, task.leaf_skills, seed=1))
    b, _ = gen.generate(plan, _ctx(task, task.leaf_skills, seed=1))
    c, _ = gen.generate(plan, _ctx(task, task.leaf_skills, seed=2))
    assert a == b != c


def test_procedural_generator_needs_a_sampler():
    with pytest.raises(TypeError, match="is not a Task"):
        ProceduralGenerator(object())

    class Fixed:  # a task with a fixed pool: no sample()
        name = "fixed"
        skills = SkillTree(["a"])

        def problems(self, split):
            return []

        def score(self, problem, output):
            return False

    with pytest.raises(ConfigError, match=r"needs a task with sample\(skill, n, rng\)"):
        ProceduralGenerator(Fixed())


def test_parse_text_plan_ambiguous_tail_needs_full_path():
    skills = ["add/carry", "mul/carry", "sub/borrow"]
    assert parse_text_plan("carry: 5, sub/borrow 2", skills).counts == {"sub/borrow": 2}
    assert parse_text_plan("mul/carry=7", skills).counts == {"mul/carry": 7}


@pytest.mark.parametrize(
    ("skill", "size"),
    [("add/no_carry", 1980), ("add/carry", 6120), ("sub/no_borrow", 2475), ("sub/borrow", 1620)],
)
def test_two_digit_problem_spaces_have_the_sizes_the_module_states(skill, size):
    # 25x the space size covers even the rarest prompts of the non-uniform families
    # (about 8 expected draws each; the seed makes it deterministic): the distinct
    # prompts seen are the whole space. The module docstring quotes these sizes.
    task = ArithmeticTask(skills=[skill], val_per_skill=1, test_per_skill=1)
    seen = {p.prompt for p in task.sample(skill, 25 * size, np.random.default_rng(0))}
    assert len(seen) == size


def test_procedural_generator_skips_excluded_prompts():
    task = ArithmeticTask(skills=["sub/borrow"], val_per_skill=128, test_per_skill=128)
    gen = ProceduralGenerator(task)
    exclude = frozenset(normalize_prompt(p.prompt) for p in task.problems("val"))
    context = GenerationContext(
        step=0,
        rng=np.random.default_rng(0),
        max_examples=1000,
        skills=task.leaf_skills,
        task=task,
        exclude=exclude,
    )
    examples, rejected = gen.generate(Allocation(counts={"sub/borrow": 1000}), context)
    assert len(examples) == 1000 and not rejected
    assert not {normalize_prompt(e.prompt) for e in examples} & exclude
