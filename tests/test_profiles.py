"""Stress profiles (teachgym/profiles.py): the config key, and that each profile's task
or student option does what it says."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from teachgym import registry
from teachgym.agents.policies.curriculum import CurriculumTeacher
from teachgym.config import ConfigError, build_config, default_config_path, load_config
from teachgym.envs.tasks.arithmetic import DEFAULT_SKILLS, ArithmeticTask
from teachgym.experiments.cli import main
from teachgym.experiments.runner import EpisodeRunner
from teachgym.experiments.sweep import plan_trials
from teachgym.profiles import PROFILES, VARIED_WIDTHS
from teachgym.students.forgetting import ForgettingStudent
from teachgym.types import Example, Provenance

LIST = "teachgym/SkillList-v0"
LEADERBOARD = Path(default_config_path()).with_name("leaderboard.yaml")
#: The teachers a leaderboard compares on SkillList (the lead's item 6: at least 8).
TEACHERS = [
    "random",
    "uniform",
    "weakest",
    "learning_progress",
    "curriculum",
    "tscl_window",
    "tscl_sampling",
    "exp3s",
    "alp",
    "ucb",
]


# -- the config key ----------------------------------------------------------------
def test_an_unknown_profile_is_a_config_error_listing_the_valid_ones(capsys) -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'hard'.*'forgetting', 'hidden'"):
        load_config(None, {"profile": "hard"})
    assert main(["run", "profile=hard", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown profile" in err


def test_no_profile_and_the_default_profile_change_nothing_else() -> None:
    plain = load_config()
    assert plain.profile is None
    default = load_config(None, {"profile": "default"})
    assert default.model_dump() == plain.model_dump() | {"profile": "default"}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_a_resolved_profile_builds_to_itself_and_reseeding_recomputes_it(name: str) -> None:
    config = load_config(LEADERBOARD, {"profile": name, "seed": 1})
    assert build_config(config) == config  # a run's config.yaml resumes as it was
    assert build_config(config.model_dump(mode="json")) == config
    reseeded = build_config(config, {"seed": 2})
    assert reseeded == load_config(LEADERBOARD, {"profile": name, "seed": 2})


def test_profiles_set_their_keys() -> None:
    assert load_config(None, {"profile": "unlearnable"}).task_kwargs["noise_skills"] == 8
    forgetting = load_config(None, {"profile": "forgetting"})
    assert forgetting.student == "tiny_forgetting"
    assert forgetting.student_kwargs["forget_every"] == 5
    assert forgetting.student_kwargs["forget_fraction"] == 0.25
    hidden = load_config(None, {"profile": "hidden", "seed": 7}).task_kwargs
    assert hidden["hide_difficulty"] is True and hidden["shuffle_seed"] == 7
    widths = [
        load_config(None, {"profile": "varied", "seed": s}).student_kwargs["hidden_size"]
        for s in range(6)
    ]
    assert widths == [64, 128, 256, 64, 128, 256]
    assert set(widths) == set(VARIED_WIDTHS)


def test_an_override_that_contradicts_the_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"profile .varied. sets student_kwargs\.hidden_size"):
        load_config(None, {"profile": "varied", "student_kwargs.hidden_size": 32})
    # The same value is no contradiction, and keys the profile leaves alone are free.
    same = load_config(None, {"profile": "varied", "student_kwargs.hidden_size": 64})
    assert same.student_kwargs["hidden_size"] == 64
    assert load_config(None, {"profile": "hidden", "budget": 9000}).budget == 9000
    # gymnasium.make's keywords are overrides too.
    with pytest.raises(ConfigError, match="noise_skills"):
        gym.make(LIST, profile="unlearnable", task_kwargs={"noise_skills": 2})


def test_a_config_built_with_a_profile_cannot_switch_to_another() -> None:
    hidden = load_config(None, {"profile": "hidden"})
    with pytest.raises(ConfigError, match="already has profile 'hidden'"):
        build_config(hidden, {"profile": "unlearnable"})


def test_task_profiles_need_the_arithmetic_task_and_varied_the_tiny_student() -> None:
    with pytest.raises(ConfigError, match="needs task: arithmetic"):
        build_config({"task": "gsm8k", "profile": "unlearnable"})
    with pytest.raises(ConfigError, match="needs student: tiny"):
        build_config({"student": "hf", "profile": "varied"})


def test_a_sweep_grids_over_profiles_with_every_teacher() -> None:
    profiles = sorted(PROFILES)
    trials = plan_trials(load_config(LEADERBOARD), TEACHERS, 2, {"profile": profiles})
    assert len(trials) == len(TEACHERS) * len(profiles) * 2
    by_label = Counter(t.label for t in trials)
    assert by_label["exp3s[profile=hidden]"] == 2
    varied = [t.config for t in trials if t.label == "ucb[profile=varied]"]
    assert [c.student_kwargs["hidden_size"] for c in varied] == [64, 128]


def _profile_env(name: str, fast: dict[str, Any], seed: int = 0) -> gym.Env:
    return gym.make(LIST, **fast, profile=name, seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_teacher_runs_on_every_profile(profile: str, fast) -> None:
    if profile == "varied":  # the profile sets the width (64 on seed 0)
        fast["student_kwargs"].pop("hidden_size")
        fast["student_kwargs"]["heads"] = 4
    env = _profile_env(profile, fast)
    for name in TEACHERS:
        teacher = registry.build("teacher", name, env=env, seed=0)
        obs, info = env.reset(seed=0)
        for _ in range(2):
            action = teacher.act(obs, info)
            assert env.action_space.contains(action), (profile, name)
            obs, reward, terminated, truncated, info = env.step(action)
            teacher.update(obs, reward, terminated, truncated, info)


# -- unlearnable ----------------------------------------------------------------------
def test_noise_skills_answer_with_random_digits() -> None:
    task = ArithmeticTask(noise_skills=3, val_per_skill=200, test_per_skill=8)
    assert task.leaf_skills == [*DEFAULT_SKILLS, "noise/n0", "noise/n1", "noise/n2"]
    answers = [p.answer for p in task.problems("val") if p.skill == "noise/n1"]
    counts = Counter(answers)
    assert set(counts) == set("0123456789") and max(counts.values()) < 40  # ~20 each
    # The same prompt gets a fresh answer each time it is drawn: nothing to learn.
    drawn: dict[str, list[str]] = {}
    for p in task.sample("noise/n0", 4000, np.random.default_rng(0)):
        drawn.setdefault(p.prompt, []).append(p.answer)
    repeated = [set(a) for a in drawn.values() if len(a) >= 3]
    assert len(repeated) > 100 and np.mean([len(a) > 1 for a in repeated]) > 0.95
    # A noise prompt is as long as a 2-digit addition, and cannot be checked.
    prompt = task.problems("val")[-1].prompt
    assert len(prompt) == len("47+85=") and task.check(prompt, "3") is None
    assert task.skill_of(prompt) == "noise/n2"


def test_stress_options_leave_the_default_problems_alone() -> None:
    plain = ArithmeticTask(val_per_skill=16, test_per_skill=16)
    stressed = ArithmeticTask(
        val_per_skill=16, test_per_skill=16, noise_skills=4, mirror=["add/no_carry"]
    )
    for split in ("val", "test"):
        ours = [p for p in stressed.problems(split) if p.skill in DEFAULT_SKILLS]
        assert ours == plain.problems(split)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert plain.sample("add/carry", 50, rng_a) == stressed.sample("add/carry", 50, rng_b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_skills": 17}, "noise_skills 17 is invalid: .*less than or equal to 16"),
        ({"noise_skills": True}, "noise_skills True is invalid: .*valid integer"),
        ({"mirror": ["cmp/3d"]}, "mirror must name numeric skills"),
        ({"mirror": ["mul/2x1"]}, "mirror must name numeric skills"),
        ({"mirror": "add/carry"}, "mirror 'add/carry' is invalid: .*valid list"),
        ({"hide_difficulty": True, "pad_operands": True}, "without pad_operands"),
        ({"hide_difficulty": "yes"}, "hide_difficulty 'yes' is invalid: .*valid boolean"),
        ({"shuffle_seed": -1}, "shuffle_seed -1 is invalid: .*greater than or equal to 0"),
    ],
)
def test_bad_stress_options_name_themselves(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ArithmeticTask(val_per_skill=2, test_per_skill=2, **kwargs)


# -- forgetting -----------------------------------------------------------------------
def _weights(student: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in student.model.state_dict().items()}


def test_the_forgetting_student_moves_back_towards_its_start_every_few_trains(
    fast, tmp_path
) -> None:
    task = ArithmeticTask(val_per_skill=2, test_per_skill=2)
    kwargs = {**fast["student_kwargs"], "forget_every": 2, "forget_fraction": 0.25}
    student = registry.build("student", "tiny_forgetting", task=task, seed=0, **kwargs)
    assert isinstance(student, ForgettingStudent)
    start = _weights(student)
    data = [
        Example(
            prompt=p.prompt, completion=p.answer, skill=p.skill, source=Provenance(generator="test")
        )
        for p in task.sample("add/carry", 32, np.random.default_rng(0))
    ]
    student.train(data)
    trained = _weights(student)
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # train 1: no reset
    plain = registry.build("student", "tiny", task=task, seed=0, **fast["student_kwargs"])
    plain.train(data)
    plain.train(data)
    student.train(data)  # train 2: trained, then a quarter of the way back to the start
    for name, value in student.model.state_dict().items():
        expected = 0.75 * plain.model.state_dict()[name] + 0.25 * start[name]
        assert torch.allclose(value, expected, atol=1e-6), name
    assert student.predict(task.problems("val")[:2]) is not None  # the rest is the student's
    # The count of trains is checkpointed, so a resumed run forgets at the same steps.
    student.save(tmp_path / "ckpt")
    again = registry.build("student", "tiny_forgetting", task=task, seed=0, **kwargs)
    again.load(tmp_path / "ckpt")
    assert again.trains == 2
    again.reset()
    assert again.trains == 0 and all(torch.equal(v, start[k]) for k, v in _weights(again).items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forget_every": 0}, "forget_every 0 is invalid: Input should be greater than or equal"),
        ({"forget_fraction": 0.0}, "forget_fraction 0.0 is invalid: Input should be greater than"),
        ({"forget_fraction": 1.5}, "forget_fraction 1.5 is invalid: Input should be less than"),
        ({"forget_evry": 2}, "unknown option 'forget_evry'; did you mean 'forget_every'?"),
        ({"forget_fraction": "half"}, "forget_fraction 'half' is invalid: Input should be a"),
    ],
)
def test_bad_forgetting_options_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    task = ArithmeticTask(val_per_skill=2, test_per_skill=2)
    with pytest.raises(ConfigError, match=message):
        registry.build("student", "tiny_forgetting", task=task, seed=0, **kwargs)


def test_a_mirror_twin_asks_the_same_problem_for_the_other_digit_order() -> None:
    task = ArithmeticTask(mirror=["add/carry"], val_per_skill=8, test_per_skill=8)
    assert task.leaf_skills[-1] == "add/carry_mirror"
    for p in (p for p in task.problems("val") if p.skill == "add/carry_mirror"):
        assert p.prompt.startswith(">")
        twin = p.prompt[1:]
        x, y = (int(v) for v in twin[:-1].split("+"))
        assert p.answer == str(x + y)  # most significant digit first
        assert task.check(p.prompt, p.answer) and not task.check(p.prompt, p.answer[::-1])
        assert task.check(twin, p.answer[::-1])  # the skill itself: reversed
        assert task.skill_of(p.prompt) == "add/carry_mirror"
    assert "starts with '>'" in task.format_description("add/carry_mirror")


# -- hidden ---------------------------------------------------------------------------
def test_hidden_difficulty_anonymises_shuffles_and_pads_but_keeps_the_problems() -> None:
    plain = ArithmeticTask(val_per_skill=8, test_per_skill=8)
    a = ArithmeticTask(val_per_skill=8, test_per_skill=8, hide_difficulty=True, shuffle_seed=0)
    b = ArithmeticTask(val_per_skill=8, test_per_skill=8, hide_difficulty=True, shuffle_seed=1)
    names = [f"s{i}" for i in range(len(DEFAULT_SKILLS))]
    assert a.leaf_skills == b.leaf_skills == names
    # The names carry no difficulty: which family is s0 follows the seed.
    first = {t.problems("val")[0].prompt.lstrip("0") for t in (a, b)}
    assert len(first) == 2
    for task in (a, b):
        prompts = [p.prompt for p in task.problems("val")]
        assert len({len(p) for p in prompts}) == 1  # no length cue
        # Same problems as the plain task, under other names, with zeros in front.
        pairs = sorted((p.prompt.lstrip("0"), p.answer) for p in task.problems("val"))
        assert pairs == sorted((p.prompt, p.answer) for p in plain.problems("val"))
        for p in task.problems("val"):
            assert task.check(p.prompt, p.answer) and task.skill_of(p.prompt) == p.skill
            if p.prompt.startswith("0"):  # a padded one, unpadded: not how this task writes it
                assert task.check(p.prompt.lstrip("0"), p.answer) is None
        trained = task.sample("s3", 20, np.random.default_rng(0))
        assert all(len(p.prompt) == len(prompts[0]) for p in trained)
        assert all(task.skill_of(p.prompt) == "s3" for p in trained)


def test_hidden_profile_leaves_the_curriculum_teacher_no_length_to_order_by(fast) -> None:
    plain = gym.make(LIST, **fast)
    assert len(CurriculumTeacher(plain).levels) == 2  # 2-digit skills first, then the rest
    hidden = _profile_env("hidden", fast, seed=4)
    assert hidden.unwrapped.skills == [f"s{i}" for i in range(len(DEFAULT_SKILLS))]
    assert len(CurriculumTeacher(hidden).levels) == 1  # every skill looks the same


# -- varied ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_varied_profile_builds_a_student_of_the_drawn_width(seed: int, fast) -> None:
    fast["student_kwargs"].pop("hidden_size")
    fast["student_kwargs"]["heads"] = 4
    env = _profile_env("varied", fast, seed=seed)
    assert env.unwrapped.student.model.config.hidden_size == VARIED_WIDTHS[seed]


# -- what a trained student does on them (slow: real training) ----------------------------
def _train(env: gym.Env, shares: list[float], steps: int) -> np.ndarray:
    action = np.asarray(shares, dtype=np.float32)
    for _ in range(steps):
        obs, *_ = env.step(action)
    return np.asarray(obs["accuracy"], dtype=np.float64)


_SMALL = {
    "student_kwargs": {
        "hidden_size": 64,
        "layers": 2,
        "heads": 4,
        "warmup_steps": 50,
        "cooldown": 0.0,
        "batch_size": 64,
    },
    "budget": 40_000,
    "examples_per_step": 1000,
    "max_steps": 40,
    "threads": 1,
}


@pytest.mark.slow
def test_a_trained_student_stays_at_chance_on_noise_skills() -> None:
    env = gym.make(
        LIST,
        task_kwargs={
            "skills": ["add/no_carry"],
            "noise_skills": 1,
            "val_per_skill": 128,
            "test_per_skill": 8,
        },
        **_SMALL,
    )
    env.reset(seed=0)
    acc = _train(env, [1.0, 1.0], 14)
    assert acc[0] > 0.5  # the student learns what can be learned
    assert acc[1] < 0.2  # and stays near chance (0.1) on the noise


@pytest.mark.slow
def test_the_forgetting_student_loses_accuracy_at_its_reset_steps() -> None:
    def curve(student: str, **forget: Any) -> list[float]:
        config = {
            "student": student,
            "task_kwargs": {
                "skills": ["add/no_carry", "sub/no_borrow"],
                "val_per_skill": 64,
                "test_per_skill": 8,
            },
            **_SMALL,
            "examples_per_step": 2000,
        }
        config["student_kwargs"] = {**_SMALL["student_kwargs"], **forget}
        env = gym.make(LIST, config=config)
        env.reset(seed=0)
        accs = []
        for _ in range(12):
            obs, *_ = env.step(np.ones(2, dtype=np.float32))
            accs.append(float(np.mean(obs["accuracy"])))
        return accs

    plain = curve("tiny")
    forgetting = curve("tiny_forgetting", forget_every=6, forget_fraction=0.25)
    assert plain[:5] == forgetting[:5]  # the same student until the first reset
    assert plain[4] > 0.4  # something learned, to be lost
    # Steps 6 and 12 end with a reset: each costs accuracy the plain student keeps.
    for step in (6, 12):
        assert forgetting[step - 1] < plain[step - 1] - 0.1, (step, plain, forgetting)
        assert forgetting[step - 1] < forgetting[step - 2] - 0.1, (step, forgetting)


@pytest.mark.slow
def test_a_forgetting_run_sliced_and_resumed_matches_an_uninterrupted_one(tmp_path) -> None:
    smoke = Path(default_config_path()).with_name("smoke.yaml")
    overrides = {
        "student": "tiny_forgetting",
        "student_kwargs.forget_every": 2,
        "student_kwargs.forget_fraction": 0.5,
        "threads": 1,
    }
    whole = tmp_path / "whole"
    assert EpisodeRunner(load_config(smoke, overrides), whole).run() is not None
    sliced = tmp_path / "sliced"
    assert EpisodeRunner(load_config(smoke, overrides), sliced).run(max_new_steps=3) is None
    assert EpisodeRunner.from_run_dir(sliced).run() is not None
    assert (sliced / "steps.jsonl").read_bytes() == (whole / "steps.jsonl").read_bytes()
