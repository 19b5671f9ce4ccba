"""The assembly step: one LLM client per spec, capabilities checked once, the teacher's view."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import pytest

import teachgym.agents.llm as llm_package
from teachgym import assembly
from teachgym.agents.skill_discovery import SkillDiscoverer
from teachgym.config import build_config
from teachgym.envs.tasks.base import TaskCapabilityError
from teachgym.errors import ConfigError


class CountingEngine:
    """Stands in for the in-process vLLM engine; counts how many were started."""

    started: ClassVar[list[str]] = []

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.model = model
        CountingEngine.started.append(model)


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    CountingEngine.started = []
    monkeypatch.setattr(llm_package, "VLLMEngineBackend", CountingEngine)  # what make_client builds
    return CountingEngine.started


def _llm_config(**llm: Any) -> Any:
    return build_config(
        {
            "task": "gsm8k",
            "task_kwargs": {"skills": "discovered"},
            "teacher": "llm",
            "generator": "llm",
            "llm": {"backend": "vllm", "model": "m", **llm},
        }
    )


def test_teacher_generator_and_discovery_share_one_engine(engines: list[str]) -> None:
    config = _llm_config()
    clients = assembly.Clients()
    teacher = assembly.component_kwargs(config, "teacher", clients)["llm"]
    generator = assembly.component_kwargs(config, "generator", clients)["llm"]
    labeller = assembly.component_kwargs(config, "task", clients)["llm"]
    assert engines == ["m"]  # three consumers, one engine
    assert teacher is generator
    assert isinstance(labeller, SkillDiscoverer) and labeller.client is teacher
    assert len(clients) == 1


def test_a_different_spec_gets_its_own_client(engines: list[str]) -> None:
    config = _llm_config()
    other = config.model_copy(
        update={"generator_kwargs": {"llm": {"backend": "vllm", "model": "other"}}}
    )
    clients = assembly.Clients()
    teacher = assembly.component_kwargs(other, "teacher", clients)["llm"]
    generator = assembly.component_kwargs(other, "generator", clients)["llm"]
    assert teacher is not generator and engines == ["m", "other"]


def test_a_missing_capability_is_named_before_the_student_is_built(fast) -> None:
    from teachgym.envs.tasks.arithmetic import ArithmeticTask

    class NoAlphabet(ArithmeticTask):
        alphabet = None  # type: ignore[assignment]

    config = build_config(fast)
    task = NoAlphabet(val_per_skill=2, test_per_skill=2)
    with pytest.raises(TaskCapabilityError, match=r"student 'tiny' needs a task with an alphabet"):
        assembly.build_student(config, task)


def test_the_teacher_sees_a_view_without_the_test_split(fast) -> None:
    env = gym.make("teachgym/SkillList-v0", **fast)
    try:
        config = env.unwrapped.config
        teacher = assembly.build_teacher(config, env)
        view = teacher.env
        assert view.unwrapped is view and view.skills == env.unwrapped.skills
        assert len(view.task.problems("val")) == len(env.unwrapped.task.problems("val"))
        with pytest.raises(PermissionError, match="test split"):
            view.task.problems("test")
        with pytest.raises(AttributeError, match="no '_test'"):
            view.task._test  # noqa: B018
    finally:
        env.close()


def test_callbacks_get_the_episode_handle_through_wrappers(fast) -> None:
    from teachgym.agents.policies.baselines import UniformTeacher
    from teachgym.experiments.loop import Callback, Episode, run_episode

    class Seen(Callback):
        def __init__(self) -> None:
            self.examples: list[int] = []

        def on_step(self, env: Any, teacher: Any, transition: Any) -> None:
            assert self.episode is not None
            self.examples.append(len(self.episode.last_examples))

    env = gym.wrappers.RecordEpisodeStatistics(gym.make("teachgym/SkillList-v0", **fast))
    try:
        seen = Seen()
        result = run_episode(env, UniformTeacher(env=env, seed=0), [seen], seed=0)
        assert isinstance(seen.episode, Episode)
        assert len(seen.examples) == result.steps_taken and sum(seen.examples) > 0
    finally:
        env.close()

    class Countdown:
        def reset(self, seed: int | None = None) -> tuple[int, dict[str, Any]]:
            return 1, {}

        def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
            return 0, 0.0, True, False, {}

    class Echo:
        def act(self, obs: Any, info: Any) -> Any:
            return obs

        def update(self, *args: Any) -> None:
            pass

    other = Callback()
    run_episode(Countdown(), Echo(), [other])
    assert other.episode is None  # not a teachgym env: no handle


def test_a_generator_without_the_protocols_name_is_refused_when_built(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Ray generator worker reports ``generator.name`` without a fallback: the
    # assembly checks the Generator protocol once, so a nameless one fails here, clearly.
    (tmp_path / "nameless_gen.py").write_text(
        "class Nameless:\n"
        "    def __init__(self, task, seed=0):\n"
        "        self.task = task\n"
        "    def generate(self, plan, context):\n"
        "        return [], {}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = build_config({"generator": "nameless_gen:Nameless"})
    task = assembly.build_task(config)
    with pytest.raises(ConfigError, match="lacks the Generator protocol's `name`"):
        assembly.build_generator(config, task)
    named = build_config({})
    assert assembly.build_generator(named, task).name == "procedural"
