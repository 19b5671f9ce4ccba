"""The bandit teachers of the curriculum literature (agents/policies/bandits.py), on
hand-built SkillList observations, and each once through the runner with a resume."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from teachgym import registry
from teachgym.agents.policies import (
    ALPTeacher,
    EXP3STeacher,
    LearningProgressTeacher,
    SkillListTeacher,
    TeacherPolicy,
    TSCLSamplingTeacher,
    TSCLWindowTeacher,
    UCBTeacher,
)
from teachgym.config import default_config_path, load_config
from teachgym.errors import ConfigError
from teachgym.experiments.runner import EpisodeRunner

SKILLS = ["add/carry", "add/plain", "sub/borrow", "mul/2x1"]
BANDITS = [TSCLWindowTeacher, TSCLSamplingTeacher, EXP3STeacher, ALPTeacher, UCBTeacher]
NAMES = {
    "tscl_window": TSCLWindowTeacher,
    "tscl_sampling": TSCLSamplingTeacher,
    "exp3s": EXP3STeacher,
    "alp": ALPTeacher,
    "ucb": UCBTeacher,
}
SMOKE = Path(default_config_path()).with_name("smoke.yaml")
#: Four skills learned at different speeds, one of them forgotten half way.
HISTORY = [
    [0.0, 0.0, 0.0, 0.0],
    [0.1, 0.3, 0.0, 0.05],
    [0.3, 0.5, 0.02, 0.05],
    [0.45, 0.6, 0.02, 0.1],
    [0.6, 0.62, 0.05, 0.1],
    [0.5, 0.63, 0.05, 0.12],
]


def fake_env(skills: Sequence[str] = SKILLS, step_size: int | None = 100) -> SimpleNamespace:
    return SimpleNamespace(
        unwrapped=SimpleNamespace(
            skills=list(skills), config=SimpleNamespace(examples_per_step=step_size)
        )
    )


def obs(accuracy: Sequence[float], used: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    acc = np.asarray(accuracy, dtype=np.float32)
    return {
        "accuracy": acc,
        "examples_used": np.zeros_like(acc) if used is None else np.asarray(used, np.float32),
        "budget_left": np.array([1000.0], dtype=np.float32),
    }


def shares(action: np.ndarray) -> np.ndarray:
    return np.asarray(action, dtype=np.float64) / float(np.sum(action))


def play(teacher: Any, history: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """The runner's act/step/update loop over observed accuracies; each step the skills
    train on what the teacher asked for (``examples_used`` grows by its shares x 100)."""
    used = np.zeros(len(history[0]))
    actions = [teacher.act(obs(history[0], used), {})]
    for acc in history[1:]:
        used += 100 * shares(actions[-1])
        teacher.update(obs(acc, used), 0.0, False, False, {})
        actions.append(teacher.act(obs(acc, used), {}))
    return actions


@pytest.mark.parametrize("cls", BANDITS)
def test_actions_fit_the_action_space_and_a_seed_fixes_them(cls: type[SkillListTeacher]) -> None:
    a, b = cls(fake_env(), seed=3), cls(fake_env(), seed=3)
    assert isinstance(a, TeacherPolicy)
    runs = play(a, HISTORY), play(b, HISTORY)
    for x, y in zip(*runs, strict=True):
        assert x.shape == (len(SKILLS),) and x.dtype == np.float32
        assert np.all(x >= 0.0) and np.all(x <= 1.0) and x.max() == pytest.approx(1.0)
        assert np.array_equal(x, y)
    # The teachers act on what they observe: not one fixed mix for the whole episode.
    assert not all(np.allclose(shares(runs[0][0]), shares(x)) for x in runs[0][1:])


def test_tscl_sampling_depends_on_its_seed() -> None:
    one = play(TSCLSamplingTeacher(fake_env(), seed=1), HISTORY)
    other = play(TSCLSamplingTeacher(fake_env(), seed=2), HISTORY)
    assert not all(np.array_equal(x, y) for x, y in zip(one, other, strict=True))


@pytest.mark.parametrize("cls", BANDITS)
def test_state_round_trip_through_json_gives_identical_actions(
    cls: type[SkillListTeacher],
) -> None:
    original = cls(fake_env(), seed=11)
    play(original, HISTORY[:4])
    state = json.loads(json.dumps(original.state_dict()))  # JSON-safe
    restored, fresh = cls(fake_env(), seed=999), cls(fake_env(), seed=999)
    restored.load_state_dict(state)
    used = np.full(len(SKILLS), 300.0)
    actions: dict[str, list[np.ndarray]] = {"original": [], "restored": [], "fresh": []}
    for acc in HISTORY[4:]:
        for name, teacher in (("original", original), ("restored", restored), ("fresh", fresh)):
            teacher.update(obs(acc, used), 0.0, False, False, {})
            actions[name].append(teacher.act(obs(acc, used), {}))
    for x, y in zip(actions["original"], actions["restored"], strict=True):
        assert np.array_equal(x, y)
    # Without the state the actions differ, so the round trip carried real information.
    assert not all(
        np.array_equal(x, y) for x, y in zip(actions["original"], actions["fresh"], strict=True)
    )


@pytest.mark.parametrize("cls", BANDITS)
def test_a_state_for_another_teacher_or_skill_list_is_refused(cls: type[SkillListTeacher]) -> None:
    state = cls(fake_env()).state_dict()
    other = ALPTeacher if cls is not ALPTeacher else UCBTeacher
    with pytest.raises(ValueError, match=other.__name__):
        other(fake_env()).load_state_dict(state)
    with pytest.raises(ValueError, match="skill list"):
        cls(fake_env(["x", "y"])).load_state_dict(state)


# -- TSCL ------------------------------------------------------------------------
def test_tscl_window_is_learning_progress_without_weakness_or_replay() -> None:
    tscl = TSCLWindowTeacher(fake_env(), window=3, temperature=0.1, epsilon=0.2)
    lp = LearningProgressTeacher(
        fake_env(), window=3, temperature=0.1, epsilon=0.2, weakness=0.0, replay=0.0
    )
    for x, y in zip(play(tscl, HISTORY), play(lp, HISTORY), strict=True):
        assert np.array_equal(x, y)
    # |slope|: a skill being forgotten draws as much data as one being learned.
    env = fake_env(["falling", "flat", "rising"])
    s = shares(
        play(TSCLWindowTeacher(env), [[0.9, 0.5, 0.1], [0.7, 0.5, 0.3], [0.5, 0.5, 0.5]])[-1]
    )
    assert s[0] == pytest.approx(s[2]) and s[0] > 5 * s[1]


def test_tscl_sampling_tries_unmeasured_skills_first_then_follows_large_changes() -> None:
    teacher = TSCLSamplingTeacher(fake_env(["a", "b", "c"]), epsilon=0.0)
    assert shares(teacher.act(obs([0.0, 0.0, np.nan]), {})) == pytest.approx([1 / 3] * 3)
    teacher.update(obs([0.2, 0.0, np.nan]), 0.0, False, False, {})
    # c has never been measured, so its buffer is empty: it gets the whole step.
    assert shares(teacher.act(obs([0.2, 0.0, np.nan]), {})) == pytest.approx([0, 0, 1])
    # Once every buffer has values, the skill with the largest |change| wins the draws.
    history = [[0.0, 0.5, 0.5], [0.3, 0.52, 0.5], [0.1, 0.5, 0.52], [0.4, 0.52, 0.5]]
    s = shares(play(TSCLSamplingTeacher(fake_env(["a", "b", "c"]), epsilon=0.0), history)[-1])
    assert s[0] == pytest.approx(1.0)
    # Ties (no change anywhere) are broken at random, not always towards the first skill.
    flat = shares(play(TSCLSamplingTeacher(fake_env(["a", "b", "c"])), [[0.5] * 3] * 3)[-1])
    assert np.all(flat > 0.2)


# -- EXP3.S ------------------------------------------------------------------------
def test_exp3s_moves_weight_to_the_skill_whose_progress_is_high() -> None:
    env = fake_env(["learning", "stuck", "mastered"])
    teacher = EXP3STeacher(env, epsilon=0.05)
    history = [[0.1 * t, 0.0, 1.0] for t in range(6)]
    s = shares(play(teacher, history)[-1])
    assert s[0] > 0.6 and s[0] > 5 * s[1]
    assert teacher.weights[0] == 0.0 and teacher.weights[1] < -1.0  # shifted so max is 0
    # Absolute progress: a skill being forgotten draws the weight as one being learned does.
    falling = [[1.0 - 0.1 * t, 0.5] for t in range(6)]
    assert shares(play(EXP3STeacher(fake_env(["falling", "flat"])), falling)[-1])[0] > 0.8


def test_exp3s_rescales_rewards_by_their_quantiles_so_the_scale_does_not_matter() -> None:
    # Graves et al.'s rescaling maps rewards to [-1, 1] by the 20th/80th percentiles of
    # the reward history: progress ten times smaller must give the same curriculum.
    env = fake_env(["a", "b", "c"])
    big = [[0.0, 0.0, 0.0], [0.3, 0.1, 0.0], [0.5, 0.15, 0.05], [0.8, 0.2, 0.05]]
    small = [[v / 10 for v in row] for row in big]
    x, y = play(EXP3STeacher(env), big), play(EXP3STeacher(env), small)
    for a, b in zip(x, y, strict=True):
        assert np.allclose(a, b)
    teacher = EXP3STeacher(env)
    teacher.rewards = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert teacher.rescale(np.array([0.0, 0.25, 0.5])) == pytest.approx([-1.0, 0.0, 1.0])


def test_exp3s_fixed_share_lets_weight_flow_back() -> None:
    env = fake_env(["a", "b"])
    history = [[0.1 * t, 0.0] for t in range(8)] + [[0.7, 0.0]] * 4
    mixing = shares(play(EXP3STeacher(env, alpha=0.2, epsilon=0.0), history)[-1])
    sticky = shares(play(EXP3STeacher(env, alpha=0.0, epsilon=0.0), history)[-1])
    assert mixing[1] > 2 * sticky[1]


# -- ALP ---------------------------------------------------------------------------
def test_alp_with_epsilon_one_is_uniform_and_with_zero_is_proportional_to_alp() -> None:
    uniform = play(ALPTeacher(fake_env(), epsilon=1.0), HISTORY)
    assert all(np.array_equal(a, np.ones(len(SKILLS), np.float32)) for a in uniform)
    teacher = ALPTeacher(fake_env(["a", "b", "c"]), epsilon=0.0, window=2)
    s = shares(play(teacher, [[0.0, 0.5, 0.3], [0.2, 0.5, 0.2], [0.5, 0.5, 0.3]])[-1])
    # ALP: a (0.2 + 0.3) / 2, b 0, c (0.1 + 0.1) / 2 -> shares 0.25 : 0 : 0.1.
    assert s == pytest.approx([0.25 / 0.35, 0.0, 0.1 / 0.35])
    eps = shares(
        play(
            ALPTeacher(fake_env(["a", "b", "c"]), epsilon=0.3, window=2),
            [[0.0, 0.5, 0.3], [0.2, 0.5, 0.2], [0.5, 0.5, 0.3]],
        )[-1]
    )
    assert eps == pytest.approx(0.7 * s + 0.1)


def test_alp_starts_uniform_before_any_progress() -> None:
    assert shares(ALPTeacher(fake_env(), epsilon=0.0).act(obs([0.3] * 4), {})) == pytest.approx(
        [0.25] * 4
    )


# -- UCB ---------------------------------------------------------------------------
def test_ucb_explores_every_arm_first() -> None:
    teacher = UCBTeacher(fake_env(["a", "b", "c"]))
    assert shares(teacher.act(obs([0.0] * 3), {})) == pytest.approx([1 / 3] * 3)
    # An arm never trained on takes the whole step, however well the others progress.
    teacher.update(obs([0.5, 0.4, 0.0], [100, 100, 0]), 0.0, False, False, {})
    assert shares(teacher.act(obs([0.5, 0.4, 0.0], [100, 100, 0]), {})) == pytest.approx([0, 0, 1])


def test_ucb_trades_progress_against_how_little_an_arm_was_tried() -> None:
    env = fake_env(["a", "b"])
    same = [[0.0, 0.0], [0.1, 0.1], [0.2, 0.2]]
    teacher = UCBTeacher(env)
    for acc in same:
        teacher.update(obs(acc, [500, 50]), 0.0, False, False, {})
    s = shares(teacher.act(obs(same[-1], [500, 50]), {}))
    assert s[1] > s[0]  # equal progress: the rarely tried arm is the one to learn about
    teacher = UCBTeacher(env, c=0.0)
    for acc in [[0.0, 0.0], [0.2, 0.05], [0.4, 0.1]]:
        teacher.update(obs(acc, [300, 300]), 0.0, False, False, {})
    s = shares(teacher.act(obs([0.4, 0.1], [300, 300]), {}))
    assert s[0] > 0.9  # no bonus: the arm with more progress takes the step


def test_ucb_needs_the_examples_used_observation() -> None:
    with pytest.raises(ValueError, match="examples_used"):
        UCBTeacher(fake_env()).act({"accuracy": np.zeros(4, np.float32)}, {})


# -- names, arguments, the runner ----------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (TSCLWindowTeacher, {"temperature": 0.0}, "temperature"),
        (TSCLSamplingTeacher, {"draws": 0}, "draws"),
        (TSCLSamplingTeacher, {"window": 0}, "window"),
        (EXP3STeacher, {"eta": 0.0}, "eta"),
        (EXP3STeacher, {"alpha": 1.5}, "alpha"),
        (EXP3STeacher, {"low_quantile": 0.9}, "low_quantile"),
        (ALPTeacher, {"epsilon": -0.1}, "epsilon"),
        (UCBTeacher, {"c": -1.0}, "c"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(
    cls: type[SkillListTeacher], kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        cls(fake_env(), **kwargs)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_registered_names_build_on_skill_list_and_refuse_other_envs(name: str, fast) -> None:
    env = gym.make("teachgym/SkillList-v0", **fast)
    assert isinstance(registry.build("teacher", name, env=env, seed=0), NAMES[name])
    text_env = gym.make("teachgym/OpenEnded-v0", **fast)
    with pytest.raises(ValueError, match="teachgym/SkillList-v0 only"):
        registry.build("teacher", name, env=text_env, seed=0)
    with pytest.raises(ConfigError, match="unknown option 'temprature'"):
        registry.build("teacher", name, env=env, seed=0, temprature=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMES))
def test_a_run_sliced_and_resumed_matches_an_uninterrupted_one(name: str, tmp_path) -> None:
    overrides = {"teacher": name, "threads": 1}
    whole = tmp_path / "whole"
    assert EpisodeRunner(load_config(SMOKE, overrides), whole).run() is not None
    sliced = tmp_path / "sliced"
    assert EpisodeRunner(load_config(SMOKE, overrides), sliced).run(max_new_steps=3) is None
    assert EpisodeRunner.from_run_dir(sliced).run() is not None
    assert (sliced / "steps.jsonl").read_bytes() == (whole / "steps.jsonl").read_bytes()
