"""Teacher policies on hand-built SkillList observations (no env, no training)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from teachgym.agents import (
    CurriculumTeacher,
    LearningProgressTeacher,
    RandomTeacher,
    SkillListTeacher,
    TeacherPolicy,
    UniformTeacher,
    WeakestTeacher,
)

SKILLS = ["add/carry", "add/plain", "sub/borrow", "mul/2x1"]
ALL_TEACHERS = [RandomTeacher, UniformTeacher, WeakestTeacher, LearningProgressTeacher]


def fake_env(skills: Sequence[str] = SKILLS) -> SimpleNamespace:
    return SimpleNamespace(unwrapped=SimpleNamespace(skills=list(skills)))


def obs(accuracy: Sequence[float], budget_left: float = 1000.0) -> dict[str, np.ndarray]:
    acc = np.asarray(accuracy, dtype=np.float32)
    return {
        "accuracy": acc,
        "examples_used": np.zeros_like(acc),
        "budget_left": np.array([budget_left], dtype=np.float32),
    }


def shares(action: np.ndarray) -> np.ndarray:
    """What the env does with an action: weights -> fractions of the step."""
    return np.asarray(action, dtype=np.float64) / float(np.sum(action))


def feed(teacher: Any, history: Sequence[Sequence[float]]) -> np.ndarray:
    """Run the act/step/update loop over a sequence of observed accuracies."""
    action = teacher.act(obs(history[0]), {})
    for acc in history[1:]:
        teacher.update(obs(acc), 0.0, False, False, {})
        action = teacher.act(obs(acc), {})
    return action


@pytest.mark.parametrize("cls", ALL_TEACHERS)
def test_actions_fit_the_skill_list_action_space(cls: type[SkillListTeacher]) -> None:
    teacher = cls(fake_env(), seed=3)
    assert isinstance(teacher, TeacherPolicy)
    history = [[0.0, 0.5, 0.9, 1.0], [0.2, 0.6, 0.95, 1.0], [0.5, 0.6, 0.97, 0.99]]
    action = feed(teacher, history)
    assert action.shape == (len(SKILLS),)
    assert action.dtype == np.float32
    assert np.all(action >= 0.0) and np.all(action <= 1.0)
    assert action.max() == pytest.approx(1.0)  # normalised by the max, not degenerate


def test_uniform_gives_every_skill_the_same_weight() -> None:
    action = UniformTeacher(fake_env()).act(obs([0.0, 0.3, 0.9, 1.0]), {})
    assert np.all(action == action[0])


def test_weakest_favours_the_weakest_skill_but_keeps_a_floor_for_mastered() -> None:
    teacher = WeakestTeacher(fake_env(), floor=0.1)
    s = shares(teacher.act(obs([1.0, 0.9, 0.6, 0.1]), {}))
    assert int(np.argmax(s)) == 3
    assert s[3] > s[2] > s[1] > s[0]
    # The mastered skill still gets at least the floor's even share (0.1 / 4 skills).
    assert s[0] >= 0.1 / len(SKILLS) - 1e-6


def test_weakest_without_floor_starves_a_mastered_skill() -> None:
    # The contrast that shows the floor is what keeps mastered skills fed.
    s = shares(WeakestTeacher(fake_env(), floor=0.0, eps=0.0).act(obs([1.0, 0.5, 0.5, 0.5]), {}))
    assert s[0] == 0.0


def test_random_teacher_is_reproducible_per_seed_and_varies_over_steps() -> None:
    a, b, c = (RandomTeacher(fake_env(), seed=s) for s in (7, 7, 8))
    o = obs([0.5] * len(SKILLS))
    seq_a = [a.act(o, {}) for _ in range(3)]
    seq_b = [b.act(o, {}) for _ in range(3)]
    seq_c = [c.act(o, {}) for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(seq_a, seq_b, strict=True))
    assert not np.array_equal(seq_a[0], seq_c[0])
    assert not np.array_equal(seq_a[0], seq_a[1])


def test_lp_prefers_a_rising_skill_and_still_replays_a_mastered_one() -> None:
    teacher = LearningProgressTeacher(fake_env(["rising", "mastered"]), replay=0.05)
    history = [[0.1, 0.99], [0.3, 0.99], [0.5, 0.99], [0.7, 0.99]]
    s = shares(feed(teacher, history))
    assert s[0] > s[1]
    assert s[1] >= 0.05 - 1e-6  # replay share, exact


def test_lp_forgetting_attracts_as_much_as_learning() -> None:
    env = fake_env(["falling", "flat", "rising"])
    teacher = LearningProgressTeacher(env, weakness=0.0, epsilon=0.0, replay=0.0, temperature=0.05)
    history = [[0.9, 0.6, 0.2], [0.7, 0.6, 0.4], [0.5, 0.6, 0.6], [0.3, 0.6, 0.8]]
    s = shares(feed(teacher, history))
    assert s[0] > 10 * s[1]  # a falling skill wins over a flat one
    assert s[0] == pytest.approx(s[2])  # |slope|: forgetting counts like learning


def test_lp_weakness_feeds_a_skill_stuck_at_zero_on_a_plateau() -> None:
    # Every slope is 0: progress alone cannot separate these skills.
    env = fake_env(["stuck", "half", "good"])
    plateau = [[0.0, 0.5, 0.9]] * 4
    flat = shares(feed(LearningProgressTeacher(env, weakness=0.0, replay=0.0), plateau))
    assert flat == pytest.approx(np.full(3, 1 / 3))
    s = shares(feed(LearningProgressTeacher(env, replay=0.0), plateau))
    assert s[0] > s[1] > s[2]


def test_lp_optimism_tries_unmeasured_skills_first() -> None:
    teacher = LearningProgressTeacher(fake_env(["measured", "unmeasured"]), epsilon=0.0)
    feed(teacher, [[0.2, np.nan], [0.4, np.nan], [0.6, np.nan]])
    s = shares(teacher.act(obs([0.6, np.nan]), {}))
    assert s[1] > 0.9


def test_lp_does_not_count_an_observation_twice_and_forgets_at_episode_end() -> None:
    teacher = LearningProgressTeacher(fake_env(["a", "b"]))
    feed(teacher, [[0.1, 0.2], [0.3, 0.2]])
    assert teacher.history == [pytest.approx([0.1, 0.3]), pytest.approx([0.2, 0.2])]
    teacher.update(obs([0.5, 0.2]), 0.0, True, False, {})
    teacher.act(obs([0.0, 0.0]), {})  # the reset observation of the next episode
    assert teacher.history == [[0.0], [0.0]]


def test_lp_window_limits_the_history() -> None:
    teacher = LearningProgressTeacher(fake_env(["a"]), window=3)
    feed(teacher, [[0.1], [0.2], [0.3], [0.4], [0.5]])
    assert teacher.history == [pytest.approx([0.3, 0.4, 0.5])]


@pytest.mark.parametrize("cls", [LearningProgressTeacher, RandomTeacher])
def test_state_round_trip_through_json_gives_identical_actions(
    cls: type[SkillListTeacher],
) -> None:
    history = [[0.1, 0.5, 0.9, 0.3], [0.3, 0.5, 0.8, 0.3], [0.4, 0.6, 0.6, 0.35]]
    later = [[0.6, 0.6, 0.5, 0.4], [0.7, 0.62, 0.45, 0.5], [0.75, 0.7, 0.5, 0.6]]
    original = cls(fake_env(), seed=11)
    feed(original, history)
    state = json.loads(json.dumps(original.state_dict()))  # proves JSON-safety
    restored = cls(fake_env(), seed=999)
    restored.load_state_dict(state)
    fresh = cls(fake_env(), seed=999)
    for acc in later:
        for teacher in (original, restored, fresh):
            teacher.update(obs(acc), 0.0, False, False, {})
        expected = original.act(obs(acc), {})
        assert np.array_equal(restored.act(obs(acc), {}), expected)
        fresh_action = fresh.act(obs(acc), {})
    # Without the state the actions differ, so the round trip carried real information.
    assert not np.array_equal(fresh_action, expected)


LEVELS = [["add/plain", "add/carry"], ["sub/borrow"], ["mul/2x1"]]


def test_curriculum_feeds_only_open_levels_and_opens_on_the_gate() -> None:
    teacher = CurriculumTeacher(fake_env(), levels=LEVELS, gate=0.5, patience=10)
    first = shares(teacher.act(obs([0.0, 0.0, 0.0, 0.0]), {}))
    assert first[0] > 0 and first[1] > 0 and first[2] == first[3] == 0.0
    teacher.update(obs([0.3, 0.5, 0.0, 0.0]), 0.0, False, False, {})
    assert shares(teacher.act(obs([0.3, 0.5, 0.0, 0.0]), {}))[2] == 0.0  # mean 0.4 < gate
    teacher.update(obs([0.6, 0.7, 0.0, 0.0]), 0.0, False, False, {})
    opened = shares(teacher.act(obs([0.6, 0.7, 0.0, 0.0]), {}))
    # One level per step: sub opens, mul stays closed although add is past the gate.
    assert teacher.level == 1 and opened[2] > 0 and opened[3] == 0.0
    # The weakest open skill gets the most, as learning progress would give it.
    assert opened[2] == opened.max()
    # Episode end closes the levels again (the student is reset to its base weights).
    teacher.update(obs([0.6, 0.7, 0.1, 0.0]), 0.0, True, False, {})
    assert teacher.level == 0 and shares(teacher.act(obs([0.0] * 4), {}))[2] == 0.0


def test_curriculum_patience_opens_a_level_that_never_passes_the_gate() -> None:
    teacher = CurriculumTeacher(fake_env(), levels=LEVELS, patience=2)
    levels = [int(teacher.act(obs([0.0] * 4), {}).astype(bool).sum()) for _ in range(7)]
    # A level is trained for 2 steps (the first 2 acts plan them); the third act opens the next.
    assert levels == [2, 2, 3, 3, 3, 4, 4]


def test_curriculum_measures_levels_from_the_task_prompts() -> None:
    import gymnasium as gym

    env = gym.make("teachgym/SkillList-v0", task_kwargs={"val_per_skill": 4, "test_per_skill": 4})
    teacher = CurriculumTeacher(env)
    assert teacher.levels == [
        ["add/no_carry", "add/carry", "sub/no_borrow", "sub/borrow"],
        ["add/carry_3d", "sub/borrow_3d", "cmp/3d"],
    ]
    with pytest.raises(ValueError, match="needs levels"):
        CurriculumTeacher(fake_env())
    with pytest.raises(ValueError, match="cover each skill exactly once"):
        CurriculumTeacher(fake_env(), levels=[["add/plain", "add/carry"], ["sub/borrow"]])
    with pytest.raises(ValueError, match="cover each skill exactly once"):
        CurriculumTeacher(fake_env(), levels=[*LEVELS, []])


def test_curriculum_state_round_trip_keeps_the_open_level() -> None:
    history = [[0.0, 0.0, 0.0, 0.0], [0.6, 0.7, 0.0, 0.0], [0.7, 0.8, 0.1, 0.0]]
    original = CurriculumTeacher(fake_env(), levels=LEVELS, seed=5)
    feed(original, history)
    state = json.loads(json.dumps(original.state_dict()))
    assert state["extra"]["level"] == 2
    restored = CurriculumTeacher(fake_env(), levels=LEVELS, seed=1)
    restored.load_state_dict(state)
    acc = [0.8, 0.8, 0.3, 0.1]
    for teacher in (original, restored):
        teacher.update(obs(acc), 0.0, False, False, {})
    assert np.array_equal(restored.act(obs(acc), {}), original.act(obs(acc), {}))
    state["extra"]["level"] = 7
    with pytest.raises(ValueError, match="level"):
        restored.load_state_dict(state)


def test_load_state_rejects_another_teacher_or_skill_list() -> None:
    state = LearningProgressTeacher(fake_env()).state_dict()
    with pytest.raises(ValueError, match="WeakestTeacher"):
        WeakestTeacher(fake_env()).load_state_dict(state)
    with pytest.raises(ValueError, match="skill list"):
        LearningProgressTeacher(fake_env(["x", "y"])).load_state_dict(state)


def test_wrong_observation_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="3 values but the teacher knows 4"):
        WeakestTeacher(fake_env()).act(obs([0.1, 0.2, 0.3]), {})


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (RandomTeacher, {"concentration": 0.0}, "concentration"),
        (WeakestTeacher, {"power": -1.0}, "power"),
        (WeakestTeacher, {"floor": 1.5}, "floor"),
        (WeakestTeacher, {"eps": float("nan")}, "eps"),
        (LearningProgressTeacher, {"window": 1}, "window"),
        (LearningProgressTeacher, {"window": 2.5}, "window"),
        (LearningProgressTeacher, {"temperature": 0.0}, "temperature"),
        (LearningProgressTeacher, {"epsilon": 1.2}, "epsilon"),
        (LearningProgressTeacher, {"weakness": -0.1}, "weakness"),
        (LearningProgressTeacher, {"mastery": 2.0}, "mastery"),
        (LearningProgressTeacher, {"replay": "a lot"}, "replay"),
        (UniformTeacher, {"seed": -1}, "seed"),
        (CurriculumTeacher, {"gate": 1.5, "levels": LEVELS}, "gate"),
        (CurriculumTeacher, {"patience": 0, "levels": LEVELS}, "patience"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(
    cls: type[SkillListTeacher], kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=name) as err:
        cls(fake_env(), **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


def test_unknown_hyper_parameter_is_rejected() -> None:
    with pytest.raises(TypeError, match="temprature"):
        LearningProgressTeacher(fake_env(), temprature=0.1)  # type: ignore[call-arg]
