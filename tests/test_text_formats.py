"""Each text format's writer and reader (``teachgym.text_formats``) agree: write, read back."""

from __future__ import annotations

import random

import gymnasium as gym
import pytest

import teachgym  # noqa: F401  (registers the env ids)
from teachgym.agents.policies import common
from teachgym.config import ENV_KINDS
from teachgym.text_formats import (
    OPEN_ENDED_MAX_CHARS,
    SKILL_TREE_MAX_CHARS,
    TreeNode,
    clean_text,
    format_plan,
    parse_open_ended,
    parse_text_plan,
    parse_tree,
    write_open_ended,
    write_tree,
)
from teachgym.types import ErrorCase

SKILLS = ["add/carry", "add/no_carry", "sub/borrow", "cmp/3d", "mul/2x1"]


def error(i: int, prompt: str = "", answer: str = "7") -> ErrorCase:
    return ErrorCase(
        problem_id=f"p{i}",
        skill=SKILLS[i % len(SKILLS)],
        prompt=prompt or f"{i}+{i}=",
        student_answer=answer,
        gold_answer=str(2 * i),
    )


@pytest.mark.parametrize("seed", range(5))
def test_open_ended_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    skills = rng.sample(SKILLS, rng.randint(1, len(SKILLS)))
    errors = [error(i, answer=rng.choice(["", "3", "12"])) for i in range(rng.randint(0, 6))]
    step, budget = rng.randint(0, 50), rng.randint(50, 5000)
    left, accuracy = rng.randint(0, budget), rng.random()
    text = write_open_ended(
        step=step, accuracy=accuracy, budget_left=left, budget=budget, skills=skills, errors=errors
    )
    obs = parse_open_ended(text)
    assert (obs.step, obs.budget_left, obs.budget, obs.skills) == (step, left, budget, skills)
    assert obs.accuracy == pytest.approx(accuracy, abs=5e-4)
    assert len(obs.errors) == len(errors)
    for line, e in zip(obs.errors, errors, strict=True):
        assert line == f"{e.prompt} -> {e.student_answer or '<empty>'} (expected {e.gold_answer})"


def test_open_ended_writer_cleans_and_cuts() -> None:
    errors = [error(0, prompt="1\x1b+2="), *(error(i, prompt="9" * 200) for i in range(1, 60))]
    text = write_open_ended(
        step=1, accuracy=0.5, budget_left=3, budget=9, skills=SKILLS, errors=errors
    )
    assert len(text) == OPEN_ENDED_MAX_CHARS and text == clean_text(text)
    obs = parse_open_ended(text)
    assert obs.errors[0].startswith("1?+2= -> 7")
    with pytest.raises(ValueError, match="not an OpenEnded observation"):
        parse_open_ended("skills: a\nstep 1")


def test_skill_tree_round_trip() -> None:
    nodes = [
        TreeNode("add", 0.5, 12, None),
        TreeNode("add/carry", 0.25, 4, 7),
        TreeNode("add/carry/three_carries", None, 0, 3),
        TreeNode("add/no_carry", 1.0, 8, 0),
        TreeNode("cmp", 0.125, 8, 10),
    ]
    assert parse_tree({"tree": write_tree(nodes)}) == nodes
    # Cut at its limit mid-line, the text still reads as the whole lines before the cut.
    many = [TreeNode(f"s{i:05d}", 0.5, i, i) for i in range(SKILL_TREE_MAX_CHARS // 20)]
    text = write_tree(many)
    assert len(text) == SKILL_TREE_MAX_CHARS
    read = parse_tree({"tree": text})
    assert 0 < len(read) < len(many) and read == many[: len(read)]


@pytest.mark.parametrize("seed", range(5))
def test_plan_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    counts = {s: rng.choice([0, 1, 5, 40, 1000]) for s in rng.sample(SKILLS, 4)}
    plan = parse_text_plan(format_plan(counts), SKILLS)
    assert plan.counts == {s: n for s, n in counts.items() if n > 0}


def test_the_envs_write_what_the_readers_read(fast) -> None:
    env = gym.make(ENV_KINDS["open_ended"], **fast)
    text, _ = env.reset(seed=0)
    obs = parse_open_ended(text)
    core = env.unwrapped
    assert obs.skills == list(core.skills) and obs.budget_left == core.budget_left
    assert len(obs.errors) == len(core.report.errors)
    tree_env = gym.make(ENV_KINDS["skill_tree"], **fast)
    tree_obs, info = tree_env.reset(seed=0)
    nodes = parse_tree(tree_obs)
    assert [n.skill for n in nodes] == [row["skill"] for row in info["tree"]]
    assert [n.allocation for n in nodes] == [row["allocation"] for row in info["tree"]]


def test_old_import_paths_still_work() -> None:
    from teachgym.agents.generators.procedural import parse_text_plan as old_plan_reader
    from teachgym.envs.base import clean_text as old_clean

    assert common.parse_open_ended is parse_open_ended and common.parse_tree is parse_tree
    assert old_plan_reader is parse_text_plan and old_clean is clean_text
