"""LLM teachers on their real envs through the real LLMClient, and the heuristic teachers.

The LLM is a *scripted backend* (canned ``RawReply``s, every prompt recorded)
behind the real :class:`~teachgym.agents.llm.LLMClient`, so parsing, schema
checks, failures and the cache are the client's own; one test goes over real
HTTP to the stand-in server of ``tests/llm_standin.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import teachgym  # noqa: F401  (registers the env ids)
from teachgym import registry
from teachgym.agents.llm import LLMClient, RawReply, Sampling, make_client
from teachgym.agents.llm.schema import response_schema
from teachgym.agents.policies import (
    LLMOpenEndedTeacher,
    LLMSkillListTeacher,
    LLMSkillTreeTeacher,
    TextFocusTeacher,
    TreeWeakestTeacher,
)
from teachgym.errors import ConfigError
from teachgym.experiments.loop import run_episode
from teachgym.types import TreeAction

OPEN = "teachgym/OpenEnded-v0"
LIST = "teachgym/SkillList-v0"
TREE = "teachgym/SkillTree-v0"

Reply = RawReply | Exception | Callable[[Sequence[dict[str, str]]], RawReply]


class ScriptedBackend:
    """A scripted backend: answers ``send`` from canned replies, in order, and records prompts.

    An exhausted script answers with an empty reply (a failure the client counts).
    """

    model = "scripted"

    def __init__(self, replies: Sequence[Reply] = ()) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []
        self.samplings: list[Sampling] = []

    async def send(
        self, messages: Sequence[dict[str, str]], sampling: Sampling, schema: Any
    ) -> RawReply:
        self.prompts.append(messages[-1]["content"])
        self.samplings.append(sampling)
        item = self.replies.pop(0) if self.replies else RawReply(text=None)
        if isinstance(item, Exception):
            raise item
        return item(messages) if callable(item) else item


def js(obj: Any) -> RawReply:
    return RawReply(
        text=json.dumps(obj), finish_reason="stop", prompt_tokens=10, completion_tokens=5
    )


def scripted(*replies: Reply, cache_dir: Path | None = None) -> tuple[LLMClient, ScriptedBackend]:
    backend = ScriptedBackend(replies)
    cache = None if cache_dir is None else str(cache_dir)
    return LLMClient(backend, max_attempts=1, backoff_s=0, cache_dir=cache), backend


def teacher_for(env: gym.Env, client: Any, **kwargs: Any) -> Any:
    """Built the way a run builds it: through the registry's ``llm`` name."""
    return registry.build("teacher", "llm", env=env, seed=0, llm=client, **kwargs)


# -- OpenEnded ---------------------------------------------------------------
def test_open_ended_prompt_shows_errors_and_the_plan_becomes_the_action(fast):
    env = gym.make(OPEN, **fast)
    plan = "add/carry: 12\r\ncmp/3d × 8 – é\rsub/borrow: 0"
    client, backend = scripted(js({"analysis": "carries are missed", "plan": plan}))
    teacher = teacher_for(env, client)
    assert isinstance(teacher, LLMOpenEndedTeacher)
    obs, info = env.reset(seed=0)

    action = teacher.act(obs, info)

    prompt = backend.prompts[0]
    assert teacher.last_prompt == prompt
    assert f"Validation accuracy: {info['accuracy']:.3f}" in prompt
    error = info["errors"][0]
    assert f"{error['prompt']} -> {error['student_answer']}" in prompt  # the student's errors
    assert all(skill in prompt for skill in env.unwrapped.skills)
    assert action == "add/carry: 12\ncmp/3d × 8 – é\nsub/borrow: 0"  # line breaks normalised
    assert env.action_space.contains(action)
    _, _, _, _, step_info = env.step(action)
    assert step_info["examples_by_skill"]["add/carry"]["made"] == 12  # the plan was followed
    assert teacher.last_stats["fallback"] is None
    assert teacher.last_stats["llm"]["requests"] == 1 and teacher.last_stats["llm"]["ok"] == 1


def test_open_ended_failures_fall_back_and_are_counted(fast):
    env = gym.make(OPEN, **fast)
    good = "add/carry: 7\ncmp/3d: 3"
    client, _ = scripted(
        RawReply(text=""),  # empty reply -> llm_empty; first step: an even plan
        js({"analysis": "", "plan": good}),
        RawReply(text="not json"),  # -> previous plan
        js({"analysis": "", "plan": "\x00\x1b\r\n  "}),  # nothing usable left -> empty_plan
        js({"analysis": "", "plan": "practise more"}),  # kept, but names no skill
    )
    teacher = teacher_for(env, client)
    obs, info = env.reset(seed=0)

    first = teacher.act(obs, info)
    assert teacher.last_stats["fallback"] == "llm_empty"
    lines = first.splitlines()
    assert [line.split(":")[0] for line in lines] == env.unwrapped.skills
    assert sum(int(line.split(":")[1]) for line in lines) == fast["examples_per_step"]
    assert teacher.act(obs, info) == good
    assert teacher.act(obs, info) == good and teacher.last_stats["fallback"] == "llm_malformed_json"
    assert teacher.act(obs, info) == good and teacher.last_stats["fallback"] == "empty_plan"
    assert teacher.act(obs, info) == "practise more"
    assert teacher.last_stats["ignored"] == {"no_skill_named": 1}
    stats = teacher.stats
    assert stats["fallbacks"] == {"empty_plan": 1, "llm_empty": 1, "llm_malformed_json": 1}
    assert stats["llm"]["requests"] == 5 and stats["llm"]["failed"] == {
        "empty": 1,
        "malformed_json": 1,
    }
    assert stats["acts"] == 5 and json.loads(json.dumps(teacher.state_dict()))


def test_open_ended_text_spaces_take_unicode_and_refuse_control_characters(fast):
    env = gym.make(OPEN, **fast)
    space = env.action_space
    for plan in ["add/carry × 3", "cmp/3d – 4\n\tmerci é", "数学: 2", "a" * 4000]:
        assert space.contains(plan), plan
    for plan in ["add\x00", "add\r\n", "add\x1b[0m", "", "a" * 4001, b"add", 3]:
        assert not space.contains(plan), plan
    assert all(space.contains(space.sample()) for _ in range(5))
    assert env.observation_space.contains("errors: 3×4= -> 7 (expected 12)\n")
    env.reset(seed=0)
    env.step("add/carry: 4 – é ×")  # accepted by step() too
    with pytest.raises(ValueError, match="non-printable"):
        env.step("add/carry: 4\x1b")


def test_a_skill_tree_observation_space_takes_unicode(fast):
    env = gym.make(TREE, **fast)
    assert env.observation_space["tree"].contains("add  acc=0.5 n=4 – é")
    assert not env.observation_space["tree"].contains("add\x00")


# -- SkillList ---------------------------------------------------------------
def weights_reply(skills: Sequence[str], **weights: int) -> dict[str, Any]:
    """A SkillList reply in the schema's shape: every skill, 0 unless given (keys with '/'
    are passed as ``add__carry``)."""
    given = {k.replace("__", "/"): v for k, v in weights.items()}
    return {"analysis": "", "weights": {s: given.get(s, 0) for s in skills}}


def test_skill_list_prompt_shows_accuracies_and_weights_become_the_action(fast):
    env = gym.make(LIST, **fast)
    skills = env.unwrapped.skills
    client, backend = scripted(js(weights_reply(skills, add__carry=3, add__no_carry=1)))
    teacher = teacher_for(env, client)
    assert isinstance(teacher, LLMSkillListTeacher)
    obs, info = env.reset(seed=0)

    action = teacher.act(obs, info)

    prompt = backend.prompts[0]
    for skill, acc in zip(skills, obs["accuracy"], strict=True):
        assert f"{skill}: accuracy {acc:.3f}" in prompt
        assert f'"{skill}": <0-10>' in prompt  # the reply's shape, every key shown
    assert info["errors"][0]["prompt"] in prompt
    assert env.action_space.contains(action) and action.dtype == np.float32
    assert action[skills.index("add/carry")] == 1.0
    assert action[skills.index("add/no_carry")] == pytest.approx(1 / 3)
    assert action.sum() == pytest.approx(4 / 3)  # nothing else got weight
    assert teacher.last_stats["fallback"] is None
    _, _, _, _, step_info = env.step(action)
    assert step_info["requested"]["add/carry"] == 15


def test_skill_list_reply_schema_has_exactly_the_skills_as_bounded_required_keys(fast):
    env = gym.make(LIST, **fast)
    skills = env.unwrapped.skills
    teacher = teacher_for(env, scripted()[0], max_analysis_chars=120)
    schema = response_schema(teacher.reply_model)
    weights = schema["$defs"]["SkillWeights"]
    assert list(weights["properties"]) == skills
    assert weights["required"] == skills and weights["additionalProperties"] is False
    for prop in weights["properties"].values():
        assert prop["enum"] == list(range(11)) and prop["type"] == "integer"
    assert schema["properties"]["analysis"]["maxLength"] == 120
    assert schema["required"] == ["analysis", "weights"]
    assert schema["additionalProperties"] is False
    # Without an analysis the reply is the weights alone.
    bare = response_schema(teacher_for(env, scripted()[0], max_analysis_chars=0).reply_model)
    assert list(bare["properties"]) == ["weights"]
    # min_weight=1 rules out the all-zero reply.
    floor = response_schema(teacher_for(env, scripted()[0], min_weight=1).reply_model)
    assert floor["$defs"]["SkillWeights"]["properties"]["cmp/3d"]["enum"] == list(range(1, 11))


def test_skill_list_failures_fall_back_to_uniform(fast):
    env = gym.make(LIST, **fast)
    skills = env.unwrapped.skills
    missing = weights_reply(skills, add__carry=1)
    del missing["weights"]["cmp/3d"]
    client, _ = scripted(
        js(weights_reply(skills, add__carry=-1)),  # below the range
        js({"analysis": "", "weights": "all of them"}),
        js(missing),  # a skill left out
        js(weights_reply(skills, add__carry=11)),  # out of range
        js({**weights_reply(skills, add__carry=1), "weights": {**missing["weights"], "x": 1}}),
    )
    teacher = teacher_for(env, client)
    obs, info = env.reset(seed=0)
    for reason in ["llm_schema"] * 5:
        action = teacher.act(obs, info)
        assert action.tolist() == [1.0] * len(skills)
        assert teacher.last_stats["fallback"] == reason
    assert teacher.stats["fallbacks"] == {"llm_schema": 5}


def test_skill_list_all_zero_reply_is_the_envs_even_split(fast):
    env = gym.make(LIST, **fast)
    client, _ = scripted(js(weights_reply(env.unwrapped.skills)))
    teacher = teacher_for(env, client)
    obs, info = env.reset(seed=0)
    assert teacher.act(obs, info).tolist() == [1.0] * len(env.unwrapped.skills)
    assert teacher.last_stats["fallback"] is None
    assert teacher.last_stats["ignored"] == {"all_zero": 1}


def test_skill_list_teacher_sends_the_schema_over_http_with_the_stand_in(fast):
    from tests.llm_standin import StandIn, json_reply

    env = gym.make(LIST, **fast)
    skills = env.unwrapped.skills
    obs, info = env.reset(seed=0)
    with StandIn([json_reply(weights_reply(skills, cmp__3d=4, sub__borrow=2))]) as server:
        spec = {
            "backend": "openai",
            "model": "stand-in-model",
            "base_url": server.base_url,
            "api_key": "EMPTY",
            "max_attempts": 1,
            "timeout_s": 10,
        }
        teacher = registry.build("teacher", "llm", env=env, seed=0, llm=spec)
        action = teacher.act(obs, info)
    sent = server.requests[0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    weights = sent["json_schema"]["schema"]["$defs"]["SkillWeights"]
    assert weights["required"] == skills and list(weights["properties"]) == skills
    assert all(p["enum"] == list(range(11)) for p in weights["properties"].values())
    assert weights["additionalProperties"] is False
    assert action[skills.index("cmp/3d")] == 1.0
    assert action[skills.index("sub/borrow")] == pytest.approx(0.5)
    assert action.sum() == pytest.approx(1.5)
    assert teacher.last_stats["fallback"] is None


# -- SkillTree ---------------------------------------------------------------
def test_skill_tree_explore_reply_becomes_a_valid_explore(fast):
    env = gym.make(TREE, **fast)
    reply = {
        "analysis": "",
        "kind": "explore",
        "skill": "add/carry",
        "new_subskills": [
            {"name": "Three carries", "count": 5},
            {"name": "three_carries", "count": 2},  # the same slug: dropped
            {"name": "!!!", "count": 1},  # nothing left: dropped
        ],
        "allocation": [],
    }
    client, backend = scripted(js(reply))
    teacher = teacher_for(env, client)
    assert isinstance(teacher, LLMSkillTreeTeacher)
    obs, info = env.reset(seed=0)

    action = teacher.act(obs, info)

    prompt = backend.prompts[0]
    assert obs["tree"] in prompt and info["errors"][0]["prompt"] in prompt
    assert action == TreeAction(
        kind="explore",
        skill="add/carry",
        new_subskills=["Three_carries"],
        allocation={"Three_carries": 5},
    )
    assert env.action_space.contains(action)
    _, _, _, _, step_info = env.step(action)
    assert "add/carry/Three_carries" in env.unwrapped.skills
    # 5 asked; the env scales the standing allocation back to the step size (20 + 5 - 3).
    assert 4 <= step_info["allocation"]["add/carry/Three_carries"] <= 5
    assert "add/carry" not in step_info["allocation"]
    assert teacher.last_stats["ignored"] == {"bad_name": 2}


def test_skill_tree_exploit_reply_allocates_leaves(fast):
    env = gym.make(TREE, **fast)
    client, _ = scripted(
        js(
            {
                "analysis": "",
                "kind": "exploit",
                "skill": "add",
                "new_subskills": [],
                "allocation": [
                    {"name": "carry", "count": 9},  # relative to "add"
                    {"name": "add/no_carry", "count": 1},
                    {"name": "sub/borrow", "count": 4},  # another root: dropped
                    {"name": "mul/2x1", "count": 4},  # no such leaf: dropped
                ],
            }
        ),
        js({"analysis": "", "kind": "explore", "skill": "div", "new_subskills": []}),
        RawReply(text="{"),
    )
    teacher = teacher_for(env, client)
    obs, info = env.reset(seed=0)

    action = teacher.act(obs, info)
    assert action == TreeAction(
        kind="exploit", skill="add", allocation={"add/carry": 9, "add/no_carry": 1}
    )
    assert teacher.last_stats["ignored"] == {"other_root": 1, "unknown_leaf": 1}
    _, _, _, _, step_info = env.step(action)
    alloc = step_info["allocation"]  # scaled back to the step size, like any allocation
    assert alloc["add/carry"] >= 8 and alloc["add/no_carry"] <= 1

    no_op = TreeAction(kind="exploit", skill="add")  # the fallback keeps the allocation
    assert teacher.act(obs, info) == no_op and teacher.last_stats["fallback"] == "unknown_node"
    assert teacher.act(obs, info) == no_op
    assert teacher.last_stats["fallback"] == "llm_malformed_json"
    env.step(no_op)


# -- templates -----------------------------------------------------------------
def test_prompt_file_replaces_the_packaged_template(fast, tmp_path):
    env = gym.make(LIST, **fast)
    path = tmp_path / "mine.txt"
    path.write_text("ACC=$accuracy costs $$5\n$skill_table", encoding="utf-8")
    client, backend = scripted(js(weights_reply(env.unwrapped.skills, cmp__3d=1)))
    teacher = teacher_for(env, client, prompt_file=str(path))
    obs, info = env.reset(seed=0)
    teacher.act(obs, info)
    assert backend.prompts[0].startswith("ACC=0.000 costs $5\nadd/no_carry: accuracy")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("acc $acuracy", r"unknown placeholder\(s\) \$acuracy; known: .*\$accuracy"),
        ("cost $5", "write '\\$\\$'"),
    ],
)
@pytest.mark.parametrize("env_id", [OPEN, LIST, TREE])
def test_a_bad_template_is_an_error_at_construction(env_id, text, message, fast, tmp_path):
    env = gym.make(env_id, **fast)
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    client, _ = scripted()
    with pytest.raises(ConfigError, match=message):
        teacher_for(env, client, prompt_file=str(path))


def test_bad_llm_options_are_config_errors(fast, tmp_path):
    env = gym.make(OPEN, **fast)
    with pytest.raises(ConfigError, match=r"needs teacher_kwargs\.llm"):
        registry.build("teacher", "llm", env=env, seed=0)
    client, _ = scripted()
    with pytest.raises(ConfigError, match="cannot read prompt_file"):
        teacher_for(env, client, prompt_file=str(tmp_path / "missing.txt"))
    with pytest.raises(
        ConfigError, match="unknown option 'temprature'; did you mean 'temperature'"
    ):
        teacher_for(env, client, temprature=0.1)


# -- state -------------------------------------------------------------------
@pytest.mark.parametrize("env_id", [OPEN, LIST, TREE])
def test_resume_reproduces_actions_from_the_cache(env_id, fast, tmp_path):
    """The saved request counter seeds sampling, so a resumed teacher hits the cache."""
    env = gym.make(env_id, **fast)
    obs, info = env.reset(seed=0)
    replies = {
        OPEN: [js({"analysis": "", "plan": f"add/carry: {n}"}) for n in (3, 4)],
        LIST: [js(weights_reply(env.unwrapped.skills, cmp__3d=1, add__carry=n)) for n in (1, 2)],
        TREE: [
            js(
                {
                    "analysis": "",
                    "kind": "exploit",
                    "skill": "cmp",
                    "allocation": [{"name": "3d", "count": n}],
                }
            )
            for n in (1, 2)
        ],
    }[env_id]
    client, backend = scripted(*replies, cache_dir=tmp_path)
    teacher = teacher_for(env, client, temperature=1.0)
    teacher.act(obs, info)
    state = json.loads(json.dumps(teacher.state_dict()))  # JSON-safe
    second = teacher.act(obs, info)
    assert backend.samplings[0].seed != backend.samplings[1].seed

    fresh_client, fresh_backend = scripted(cache_dir=tmp_path)  # would fail on a cache miss
    resumed = teacher_for(env, fresh_client, temperature=1.0)
    resumed.load_state_dict(state)
    again = resumed.act(obs, info)
    assert fresh_backend.prompts == [] and resumed.last_stats["llm"]["cached"] == 1
    assert str(again) == str(second) if env_id != LIST else np.array_equal(again, second)
    assert resumed.stats["acts"] == 2


# -- over HTTP -------------------------------------------------------------------
def test_open_ended_teacher_over_http_with_the_stand_in(fast):
    from tests.llm_standin import StandIn, json_reply

    env = gym.make(OPEN, **fast)
    obs, info = env.reset(seed=0)
    plan = "add/carry: 10\ncmp/3d × 10"
    with StandIn([json_reply({"analysis": "x", "plan": plan})]) as server:
        spec = {
            "backend": "openai",
            "model": "stand-in-model",
            "base_url": server.base_url,
            "api_key": "EMPTY",
            "max_attempts": 1,
            "timeout_s": 10,
        }
        teacher = registry.build("teacher", "llm", env=env, seed=0, llm=spec)
        action = teacher.act(obs, info)
    body = server.requests[0]
    assert info["errors"][0]["prompt"] in body["messages"][-1]["content"]
    assert action == plan and env.action_space.contains(action)
    assert teacher.last_stats["llm"]["ok"] == 1 and teacher.last_stats["llm"]["prompt_tokens"] > 0
    env.step(action)


def test_make_client_passes_a_client_through():
    client, _ = scripted()
    assert make_client(client) is client


# -- heuristic teachers ------------------------------------------------------------
def _episode(env_id: str, teacher: str, fast: dict[str, Any], **kwargs: Any) -> Any:
    env = gym.make(env_id, **fast)
    policy = registry.build("teacher", teacher, env=env, seed=1, **kwargs)
    actions: list[Any] = []

    class Spy:
        def act(self, obs: Any, info: Any) -> Any:
            action = policy.act(obs, info)
            assert env.action_space.contains(action), action
            actions.append(action)
            return action

        def update(self, *args: Any) -> None:
            policy.update(*args)

    result = run_episode(env, Spy(), seed=0)
    assert result.finished and "test_accuracy" in result.info
    json.dumps(policy.state_dict())
    return policy, actions, env


@pytest.mark.parametrize("teacher", ["uniform", "random"])
@pytest.mark.parametrize("env_id", [OPEN, LIST, TREE])
def test_uniform_and_random_run_on_every_env(env_id, teacher, fast):
    _episode(env_id, teacher, fast)


def test_text_focus_tries_every_skill_then_follows_reward(fast):
    fast["budget"] = 160  # 8 steps: 7 skills tried once, then a chosen focus
    policy, actions, env = _episode(OPEN, "text_focus", fast)
    assert isinstance(policy, TextFocusTeacher)
    skills = env.unwrapped.skills
    focus = [max(a.splitlines(), key=lambda line: int(line.split(": ")[1])) for a in actions]
    assert [f.split(":")[0] for f in focus[:7]] == skills
    assert set(policy.value) == set(skills)


def test_tree_weakest_exploits_then_splits_a_leaf_that_stays_weak(fast):
    policy, actions, env = _episode(TREE, "tree_weakest", fast, patience=2, threshold=1.0)
    assert isinstance(policy, TreeWeakestTeacher)
    kinds = [a.kind for a in actions]
    assert kinds[0] == "exploit" and "explore" in kinds
    explore = actions[kinds.index("explore")]
    assert explore.new_subskills == [f"{explore.skill.rsplit('/', 1)[-1]}_{i}" for i in (1, 2)]
    assert all(f"{explore.skill}/{n}" in env.unwrapped.skills for n in explore.new_subskills)


@pytest.mark.parametrize(
    ("env_id", "teacher", "use"),
    [
        (OPEN, "weakest", "text_focus"),
        (TREE, "curriculum", "tree_weakest"),
        (LIST, "text_focus", "weakest"),
    ],
)
def test_a_teacher_for_another_env_is_a_clear_error(env_id, teacher, use, fast):
    env = gym.make(env_id, **fast)
    with pytest.raises(ConfigError, match=f"acts on .* only; for {env_id} use one of .*'{use}'"):
        registry.build("teacher", teacher, env=env, seed=0)


def test_a_typo_in_a_passed_on_teacher_kwarg_is_a_config_error(fast):
    """CurriculumTeacher passes **kwargs on, so only its base rejects the typo."""
    env = gym.make(LIST, **fast)
    with pytest.raises(ConfigError, match=r"\(CurriculumTeacher\): unknown option 'gatee'"):
        registry.build("teacher", "curriculum", env=env, seed=0, gatee=0.3)
