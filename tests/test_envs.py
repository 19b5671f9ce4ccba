"""The three environments against the gymnasium contract and DESIGN.md's."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import teachgym  # noqa: F401  (registers the env ids)
from teachgym.agents.generators import GenerationContext, ProceduralGenerator
from teachgym.envs import ArithmeticTask, FlatSkillList
from teachgym.types import Allocation, Example, Provenance, TextPlan, TreeAction

ENV_IDS = ["teachgym/SkillList-v0", "teachgym/OpenEnded-v0", "teachgym/SkillTree-v0"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes(env_id, fast):
    env = gym.make(env_id, **fast)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make_with_the_embedded_default_config(env_id):
    env = gym.make(env_id)
    assert env.unwrapped.config.budget > 0
    assert env.unwrapped.skills == list(ArithmeticTask().leaf_skills)
    assert len(env.unwrapped.skills) == 7


def test_skill_list_step_contract(fast):
    env = gym.make("teachgym/SkillList-v0", **fast)
    obs, info = env.reset(seed=0)
    assert obs["accuracy"].dtype == np.float32 and obs["budget_left"][0] == 60
    assert "test_accuracy" not in info
    k = len(env.unwrapped.skills)
    weights = np.zeros(k, dtype=np.float32)
    weights[0] = 1.0
    obs, reward, terminated, truncated, info = env.step(weights)
    assert obs in env.observation_space
    assert info["examples_made"] == 20 and info["requested"] == {
        s: 20 * (s == "add/no_carry") for s in env.unwrapped.skills
    }
    assert info["examples_accepted"] + sum(info["rejected"].values()) == 20
    assert set(info["timings"]) == {"generate", "train", "evaluate"}
    assert all(v >= 0 for v in info["timings"].values())
    assert (
        obs["examples_used"][0] == info["examples_accepted"] and obs["examples_used"][1:].sum() == 0
    )
    assert reward == pytest.approx(info["accuracy"] - env.unwrapped.history[0])
    assert not terminated and not truncated and "test_accuracy" not in info  # only at the end
    steps = 1
    while not terminated:
        # The budget rule: the teacher pays for what the student trains on, nothing else.
        assert obs["budget_left"][0] + obs["examples_used"].sum() == 60
        obs, _, terminated, truncated, info = env.step(weights)
        steps += 1
    assert not truncated and obs["budget_left"][0] == 0 and obs["examples_used"].sum() == 60
    assert steps >= 3 and 0.0 <= info["test_accuracy"] <= 1.0
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(weights)


def test_truncated_at_max_steps(fast):
    fast["max_steps"] = 2
    env = gym.make("teachgym/SkillList-v0", **fast)
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(np.ones(7, dtype=np.float32))
    assert not truncated
    _, _, terminated, truncated, info = env.step(np.ones(7, dtype=np.float32))
    assert truncated and not terminated and "test_accuracy" in info


def test_cost_per_example_lowers_reward(fast):
    rewards = []
    for cost in (0.0, 0.01):
        env = gym.make("teachgym/SkillList-v0", cost_per_example=cost, **fast)
        env.reset(seed=0)
        _, reward, _, _, info = env.step(np.ones(7, dtype=np.float32))
        rewards.append((reward, info["examples_accepted"]))
    (r0, n), (r1, _) = rewards
    assert r1 == pytest.approx(r0 - 0.01 * n)


BAD_ACTIONS = [
    ("teachgym/SkillList-v0", np.ones(5, dtype=np.float32), "shape"),
    ("teachgym/SkillList-v0", np.array([1, 1, 1, 1, 1, 1, np.nan]), "finite"),
    ("teachgym/SkillList-v0", np.array([1, 1, 1, 1, 1, 1, -1.0]), ">= 0"),
    ("teachgym/SkillList-v0", "add", "weights"),
    ("teachgym/SkillList-v0", Allocation(counts={"div/exact": 3}), "unknown skills"),
    ("teachgym/SkillTree-v0", TreeAction(kind="exploit", skill="div"), "no node 'div'"),
    (
        "teachgym/SkillTree-v0",
        TreeAction(kind="exploit", skill="add", allocation={"cmp/3d": 3}),
        "not a leaf",
    ),
    (
        "teachgym/SkillTree-v0",
        TreeAction(kind="explore", skill="add", new_subskills=["carry"]),
        "exists already",
    ),
    (
        "teachgym/SkillTree-v0",
        TreeAction(kind="explore", skill="add", new_subskills=["x y"]),
        "one path segment",
    ),
    ("teachgym/SkillTree-v0", {"kind": "jump", "skill": "add"}, "invalid TreeAction"),
    ("teachgym/SkillTree-v0", 42, "TreeAction or a dict"),
    ("teachgym/OpenEnded-v0", 3, "str or TextPlan"),
    ("teachgym/OpenEnded-v0", "   ", "empty"),
    ("teachgym/OpenEnded-v0", "add\x00", "non-printable"),
]


@pytest.mark.parametrize(("env_id", "action", "message"), BAD_ACTIONS)
def test_bad_actions_raise_and_leave_state_unchanged(env_id, action, message, fast):
    env = gym.make(env_id, **fast)
    env.reset(seed=0)
    before = env.unwrapped.state_dict()
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert env.unwrapped.state_dict() == before


def test_open_ended_reads_plans_and_counts_unreadable_ones(fast):
    env = gym.make("teachgym/OpenEnded-v0", **fast)
    obs, _ = env.reset(seed=0)
    assert "validation accuracy" in obs and obs in env.observation_space
    _, _, _, _, info = env.step(TextPlan(text="add/carry: 12, cmp/3d: 8"))
    assert info["examples_made"] == 20
    _, _, _, _, info = env.step("make it better")
    assert info["examples_made"] == 0 and info["rejected"] == {"unparsed_plan": 1}


def test_skill_tree_explore_then_exploit(fast):
    env = gym.make("teachgym/SkillTree-v0", **fast)
    obs, info = env.reset(seed=0)
    assert {r["skill"] for r in info["tree"]} >= {"add", "add/carry"}
    action = TreeAction(
        kind="explore", skill="cmp/3d", new_subskills=["equal"], allocation={"equal": 2}
    )
    obs, _, _, _, info = env.step(action)
    assert "cmp/3d/equal" in env.unwrapped.skills and "cmp/3d" not in env.unwrapped.skills
    assert info["allocation"]["cmp/3d/equal"] == 2
    assert "cmp/3d/equal" in obs["tree"]
    # Data for the invented subskill comes from its ancestor's procedure.
    made = [e for e in env.unwrapped.last_examples if e.skill == "cmp/3d/equal"]
    assert made and all("?" in e.prompt for e in made)
    _, _, _, _, info = env.step(
        TreeAction(
            kind="exploit", skill="add", allocation={"carry": 0, "no_carry": 0, "carry_3d": 0}
        )
    )
    assert info["allocation"]["add/carry"] == 0
    assert not any(e.skill.startswith("add/") for e in env.unwrapped.last_examples)
    assert set(info["skill_rewards"]) == set(env.unwrapped.task.leaf_skills)


def test_skill_tree_standing_allocation_never_exceeds_a_step(fast):
    env = gym.make("teachgym/SkillTree-v0", **fast)
    env.reset(seed=0)
    _, _, _, _, info = env.step(
        TreeAction(kind="exploit", skill="add", allocation={"carry": 300, "no_carry": 100})
    )
    # 300 + 100 + the other leaves' shares > 20: scaled down when set, proportions
    # kept, so what the observation shows is what a step makes.
    alloc = info["allocation"]
    assert sum(alloc.values()) == 20
    assert abs(alloc["add/carry"] - 3 * alloc["add/no_carry"]) <= 2 and alloc["add/no_carry"] > 0
    assert sum(info["requested"].values()) == 20


class _CountingTask:
    """Wraps a task and counts the problems its sampler is asked for."""

    def __init__(self, task):
        self._task, self.sampled = task, 0

    def __getattr__(self, name):
        return getattr(self._task, name)

    def sample(self, skill, n, rng):
        self.sampled += n
        return self._task.sample(skill, n, rng)


HUGE_PLANS = [
    ("teachgym/SkillList-v0", Allocation(counts={"add/carry": 10**12, "cmp/3d": 10**30})),
    ("teachgym/OpenEnded-v0", "add/carry: 999999999999\ncmp/3d: " + "9" * 3000),
    (
        "teachgym/SkillTree-v0",
        TreeAction(kind="exploit", skill="add", allocation={"carry": 10**12, "no_carry": 3}),
    ),
    (
        "teachgym/SkillTree-v0",
        TreeAction(kind="explore", skill="sub", new_subskills=["x"], allocation={"x": 10**18}),
    ),
    (
        "teachgym/SkillTree-v0",
        TreeAction(
            kind="explore", skill="sub/borrow", new_subskills=["x"], allocation={"x": 10**18}
        ),
    ),
]


@pytest.mark.parametrize(("env_id", "plan"), HUGE_PLANS)
def test_huge_plans_are_clamped_before_generation(env_id, plan, fast):
    task = _CountingTask(ArithmeticTask(val_per_skill=4, test_per_skill=4))
    env = gym.make(env_id, task=task, **fast)
    env.reset(seed=0)
    seen_plans = []
    generate = env.unwrapped.generator.generate

    def spy(plan, context):
        seen_plans.append(plan)
        return generate(plan, context)

    env.unwrapped.generator.generate = spy
    _, _, _, _, info = env.step(plan)
    # Count plans reach the generator already clamped to the step cap; a text plan
    # can only be bounded by the generator, which the counting task checks below.
    assert all(p.total <= 20 for p in seen_plans if isinstance(p, Allocation))
    # The generator was never asked for the plan's count: at most the step cap
    # (20), and the few redraws distinct prompts need.
    assert 0 < task.sampled <= 4 * 20 + 64 * len(env.unwrapped.skills)
    assert info["examples_made"] <= 20 * env.unwrapped.max_generation_rounds
    assert 0 < info["examples_accepted"] <= 20
    assert info["budget_left"] == 60 - info["examples_accepted"]
    if "requested" in info:
        assert sum(info["requested"].values()) == 20


def test_the_procedural_generator_honours_max_examples():
    task = ArithmeticTask(val_per_skill=4, test_per_skill=4)
    gen = ProceduralGenerator(task)
    for plan in (
        Allocation(counts={"add/carry": 10**30, "sub/borrow": 10**29}),
        TextPlan(text="add/carry: 10000000000000"),
    ):
        context = GenerationContext(
            step=0,
            rng=np.random.default_rng(0),
            max_examples=50,
            skills=task.leaf_skills,
            task=task,
        )
        examples, _ = gen.generate(plan, context)
        assert len(examples) == 50


def test_info_shows_per_skill_what_the_teacher_paid_for(fast):
    src = Provenance(generator="test")

    class Leaky:
        """In its first round, half of its examples are validation items; every round it
        reports 3 of an event-type reason of its own (summed over rounds)."""

        name = "leaky"

        def generate(self, plan, context):
            r = context.extra["round"]
            val = context.task.problems("val")
            out = []
            for i, p in enumerate(val[: context.max_examples]):
                leak = r == 0 and i % 2
                prompt = p.prompt if leak else f"{i + 10}+{100 * r + 10}="
                out.append(Example(prompt=prompt, completion="2", skill=p.skill, source=src))
            return out, {"space_exhausted": 3}

    env = gym.make("teachgym/SkillList-v0", generator=Leaky(), **fast)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(7, dtype=np.float32))
    by_skill = info["examples_by_skill"]
    # Round 1 made 20 and lost 10 to decontamination; round 2 made the 10 missing.
    assert sum(v["made"] for v in by_skill.values()) == info["examples_made"] == 30
    assert sum(v["accepted"] for v in by_skill.values()) == info["examples_accepted"] == 20
    assert sum(v["rejected"].get("contaminated", 0) for v in by_skill.values()) == 10
    assert info["rejected"] == {"contaminated": 10, "space_exhausted": 6}
    # Only the accepted examples are charged.
    assert info["budget_left"] == 60 - 20
    assert sum(info["examples_used"].values()) == 20


def test_a_text_plan_gets_one_generation_round(fast):
    env = gym.make("teachgym/OpenEnded-v0", **fast)
    env.reset(seed=0)
    calls = []
    real = env.unwrapped.generator.generate

    def spy(plan, context):
        calls.append(context.max_examples)
        return real(plan, context)

    env.unwrapped.generator.generate = spy
    env.step("add/carry: 5")
    assert calls == [20]


def test_env_tells_the_student_the_episode_horizon(fast):
    env = gym.make("teachgym/SkillList-v0", **fast)
    assert env.unwrapped.student.horizon == 60  # the budget
    fast["max_steps"] = 2
    env = gym.make("teachgym/SkillList-v0", **fast)
    assert env.unwrapped.student.horizon == 40  # two full steps cannot spend more


def test_decontamination_and_dedup_counted(fast):
    env = gym.make("teachgym/SkillList-v0", **fast)
    env.reset(seed=0)
    core = env.unwrapped
    val = core.task.problems("val")[0]

    src = Provenance(generator="test")
    examples = [
        Example(prompt=val.prompt, completion=val.answer, skill=val.skill, source=src),
        Example(prompt="11+11=", completion="22", skill="add/no_carry", source=src),
        Example(prompt="11+11=", completion="22", skill="add/no_carry", source=src),
        Example(prompt="1/1=", completion="1", skill="add/no_carry", source=src),
        Example(prompt="1+1=", completion="2", skill="div/x", source=src),
        Example(prompt="12+12=", completion="24", skill="add/no_carry", source=src),
        Example(prompt="13+13=", completion="26", skill="add/no_carry", source=src),
    ]
    accepted, rejected = core._filter(examples, set(core.tree.nodes), cap=2)
    assert [e.prompt for e in accepted] == ["11+11=", "12+12="]
    assert val.skill == "add/no_carry"
    assert {k: dict(v) for k, v in rejected.items()} == {
        "add/no_carry": {"contaminated": 1, "duplicate": 1, "bad_characters": 1, "over_budget": 1},
        "div/x": {"unknown_skill": 1},
    }


def test_same_seed_same_episode(fast):
    def episode() -> list:
        env = gym.make("teachgym/SkillList-v0", **fast)
        obs, _ = env.reset(seed=3)
        out = [obs["accuracy"].tolist()]
        for i in range(3):
            w = np.eye(7, dtype=np.float32)[i]
            obs, r, *_, info = env.step(w)
            out.append((obs["accuracy"].tolist(), r, info["train"]["loss"]))
        return out

    assert episode() == episode()


def test_flat_wrapper_is_a_float32_box(fast):
    env = FlatSkillList(gym.make("teachgym/SkillList-v0", **fast))
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    obs, *_ = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and obs.shape == (15,) and obs in env.observation_space


@pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric")
def test_flat_skill_list_passes_sb3_check_env_and_rolls_out(fast):
    # SB3's own checker: spaces it can learn on, observations inside them, reset/step types.
    env_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    env = FlatSkillList(gym.make("teachgym/SkillList-v0", **fast))
    env_checker.check_env(env, warn=True)
    # A rollout with random actions: every observation in the space, every reward finite,
    # and the episode ends by spending the budget.
    obs, _ = env.reset(seed=1)
    env.action_space.seed(1)
    rewards, done = [], False
    while not done:
        assert obs in env.observation_space
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        rewards.append(reward)
        done = terminated or truncated
    assert obs in env.observation_space and terminated
    assert len(rewards) >= 3 and np.isfinite(rewards).all()
    assert obs[-1] == 0.0  # budget_left / budget


def test_accumulate_mode_retrains_on_all_data(fast):
    fast["student_kwargs"]["mode"] = "accumulate"
    env = gym.make("teachgym/SkillList-v0", **fast)
    env.reset(seed=0)
    _, _, _, _, first = env.step(np.ones(7, dtype=np.float32))
    _, _, _, _, second = env.step(np.ones(7, dtype=np.float32))
    # batch 16: the second call trains on both steps' data from the base weights.
    n = first["examples_accepted"] + second["examples_accepted"]
    assert second["train"]["steps"] == -(-n // 16) > first["train"]["steps"]


def test_env_close_closes_a_local_student(fast):
    # A student with a vLLM evaluation engine holds it (and its weight directories) until
    # closed; the env is what a user closes.
    env = gym.make("teachgym/SkillList-v0", **fast)
    closed = []
    env.unwrapped.student.close = lambda: closed.append(True)
    env.close()
    assert closed == [True]
