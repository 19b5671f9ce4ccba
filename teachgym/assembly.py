"""The one assembly step: a resolved config in, checked and built components out.

Everything that turns a config into objects goes through here: ``gymnasium.make``
(the env ids' entry points), ``teachgym run``, ``compare`` and ``sweep``
trials, and the Ray workers that build a student or a generator in their own
process. So the rules live in one place:

- **Checked once, before any work.** :func:`check_config` resolves every
  component name, checks every ``*_kwargs`` key and type against the
  component's options, the teacher's protocol, the optional packages the
  config needs; :func:`build_parts` then checks the task's capabilities
  against what each component ``requires`` (:class:`TaskCapabilities`).
- **One LLM client per distinct spec.** The ``llm`` teacher, the ``llm``
  generator and skill discovery given the same spec share one client, so an
  in-process vLLM engine is started once per model per process.
- **Process state set once.** :func:`prepare_process` sets torch's threads and
  seeds the global generators; components never touch process state.
- **The env receives its parts.** :class:`~teachgym.envs.base.TeacherEnv`
  builds nothing; it is handed a :class:`~teachgym.envs.base.Parts`.
- **Ray actors from the same builders.** With ``backend: ray``,
  :class:`RemoteComponents` starts the student, the generator and the
  evaluation workers in a placement group (:mod:`teachgym.distributed`);
  each worker builds its part with the builders here, in its own process.

This module sits at the top of the layers (with ``teachgym.experiments``):
it may import every package, and nothing below it imports it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from teachgym import registry
from teachgym.agents.generators.base import Generator
from teachgym.agents.generators.remote import GeneratorProxy, GeneratorWorker
from teachgym.agents.llm import LLMClient, make_client
from teachgym.agents.policies.view import TeacherView
from teachgym.agents.skill_discovery import SkillDiscoverer
from teachgym.config import ENV_KINDS, ExperimentConfig, build_config
from teachgym.distributed import connect, place, require_ray, role_bundles, runtime_env_for
from teachgym.envs.base import Parts, TeacherEnv
from teachgym.envs.registration import ENV_CLASSES
from teachgym.envs.tasks.base import Task, TaskCapabilities
from teachgym.envs.vector import SkillListVectorEnv
from teachgym.errors import ConfigError
from teachgym.runtime import seed_everything, set_torch_threads
from teachgym.students.population import OPTIONS, tiny_population_for_task
from teachgym.students.remote import StudentProxy, StudentWorker

__all__ = [
    "Clients",
    "build_generator",
    "build_parts",
    "build_student",
    "build_task",
    "build_teacher",
    "check_config",
    "make_env",
    "make_vector_env",
    "prepare_process",
]


def prepare_process(config: ExperimentConfig, *, threads: int | None = None) -> None:
    """Process-wide state, set by whoever owns the process (the runner, a Ray worker):
    torch's thread count (``threads``, else the config's) and the global generators'
    seeds, before any component is built so that user components are seeded too."""
    count = threads if threads is not None else config.threads
    if count is not None:
        set_torch_threads(count)
    seed_everything(config.seed)


class Clients:
    """The LLM clients of one process, one per distinct spec.

    Two components whose ``llm`` specs are equal get the same client (its
    cache, its counters and, with ``backend: vllm``, its engine).
    """

    def __init__(self, factory: Callable[[Mapping[str, Any]], Any] = make_client) -> None:
        self._factory = factory
        self._clients: dict[str, Any] = {}

    def get(self, spec: Any) -> Any:
        """The client for ``spec`` (a mapping), built on first use; a client passes through."""
        if spec is None or isinstance(spec, LLMClient) or not isinstance(spec, Mapping):
            return spec
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in self._clients:
            self._clients[key] = self._factory(spec)
        return self._clients[key]

    def __len__(self) -> int:
        return len(self._clients)


def _kwargs(config: ExperimentConfig, kind: str) -> dict[str, Any]:
    if kind == "student":
        return dict(config.student_kwargs)
    return config.component_kwargs(kind)  # type: ignore[arg-type]


def component_kwargs(
    config: ExperimentConfig, kind: str, clients: Clients | None = None
) -> dict[str, Any]:
    """A component's constructor keywords from the config, with its LLM resolved.

    An ``llm`` spec becomes the process's shared client; a task whose skills an
    LLM discovers gets a labeller (:class:`~teachgym.agents.skill_discovery.SkillDiscoverer`)
    on that client instead of the spec, so tasks never import the LLM layer.
    """
    kwargs = _kwargs(config, kind)
    if "llm" in kwargs and clients is not None:
        client = clients.get(kwargs["llm"])
        if kind == "task":
            kwargs["llm"] = SkillDiscoverer(client) if client is not None else None
        else:
            kwargs["llm"] = client
    return kwargs


def check_config(config: ExperimentConfig) -> None:
    """Everything about ``config`` that can be checked without building anything.

    Every component name resolves (or is one error line naming the nearest
    valid one), every ``*_kwargs`` key is an option of its component and of
    the right type, the teacher has the protocol's methods, takes ``env`` and
    ``seed`` and acts on the config's env, and the optional packages the
    config needs are installed. ``teachgym run``, ``compare`` and every trial
    of a sweep call this before any work starts.
    """
    registry.check_config(config)


def build_task(config: ExperimentConfig, clients: Clients | None = None) -> Task:
    return registry.build("task", config.task, **component_kwargs(config, "task", clients))


def _require(config: ExperimentConfig, kind: str, caps: TaskCapabilities) -> None:
    """The capabilities a component declares it needs (``requires``), checked now."""
    name = getattr(config, kind)
    target = registry.target_class(kind, name, config.env)  # type: ignore[arg-type]
    for capability in getattr(target, "requires", ()):
        caps.require(capability, f"{kind} {name!r}")
    if kind == "generator" and config.generator_kwargs.get("cross_check"):
        caps.require("agreement", f"generator {name!r} with cross_check")


def build_student(config: ExperimentConfig, task: Task) -> Any:
    _require(config, "student", TaskCapabilities.of(task))
    return registry.build(
        "student", config.student, task=task, seed=config.seed, **_kwargs(config, "student")
    )


def build_generator(config: ExperimentConfig, task: Task, clients: Clients | None = None) -> Any:
    _require(config, "generator", TaskCapabilities.of(task))
    generator = registry.build(
        "generator",
        config.generator,
        task=task,
        seed=config.seed,
        **component_kwargs(config, "generator", clients),
    )
    if not isinstance(generator, Generator):
        raise ConfigError(
            f"generator {config.generator!r} built a {type(generator).__name__}, which lacks "
            f"the Generator protocol's `name` or `generate(plan, context)`"
        )
    return generator


def build_parts(
    config: ExperimentConfig,
    *,
    task: Task | None = None,
    student: Any = None,
    generator: Any = None,
    clients: Clients | None = None,
) -> Parts:
    """The env's components for ``config``; prebuilt ones passed in are used as they are.

    With ``backend: ray`` the student and the generator are Ray actors behind
    proxies (:class:`RemoteComponents`); the workers score their own evaluation
    shards unless a task object was passed in (the workers could not see it).
    A failure half-way releases whatever was built.
    """
    clients = clients if clients is not None else Clients()
    remote = None
    score_remotely = task is None and student is None
    task = task if task is not None else build_task(config, clients)
    caps = TaskCapabilities.of(task)
    try:
        if config.backend == "ray" and (student is None or generator is None):
            remote = RemoteComponents(config)
            student = student or remote.student
            generator = generator or remote.generator
        if student is None:
            student = build_student(config, task)
        if generator is None:
            generator = build_generator(config, task, clients)
    except BaseException:
        if remote is not None:
            remote.close()
        raise
    return Parts(
        task=task,
        caps=caps,
        student=student,
        generator=generator,
        remote=remote,
        score_remotely=score_remotely and remote is not None,
        clients=clients,
    )


def make_env(
    env_id: str,
    config: ExperimentConfig | Mapping[str, Any] | None = None,
    *,
    task: Task | None = None,
    student: Any = None,
    generator: Any = None,
    render_mode: str | None = None,
    **overrides: Any,
) -> TeacherEnv:
    """Build the env registered as ``env_id`` (the ``gymnasium.make`` entry point).

    ``config`` and ``overrides`` are the experiment config's keys (``env`` is
    ``env_id``); ``task``, ``student``, ``generator`` are prebuilt components
    that replace the config's (tests, components living elsewhere).
    """
    if env_id not in ENV_CLASSES:
        raise ConfigError(f"unknown env {env_id!r}; known: {sorted(ENV_CLASSES)}")
    cfg = build_config(config, {**overrides, "env": env_id})
    given = {"task": task, "student": student, "generator": generator}
    registry.check_config(cfg, kinds=tuple(k for k, v in given.items() if v is None))
    if cfg.threads is not None:
        set_torch_threads(cfg.threads)
    parts = build_parts(cfg, task=task, student=student, generator=generator)
    try:
        env_class = registry.load(ENV_CLASSES[env_id])
        return env_class(cfg, parts, render_mode=render_mode)
    except BaseException:
        parts.close()
        raise


def make_skill_list(**kwargs: Any) -> TeacherEnv:
    """``gymnasium.make("teachgym/SkillList-v0", ...)``."""
    return make_env(ENV_KINDS["skill_list"], **kwargs)


def make_open_ended(**kwargs: Any) -> TeacherEnv:
    """``gymnasium.make("teachgym/OpenEnded-v0", ...)``."""
    return make_env(ENV_KINDS["open_ended"], **kwargs)


def make_skill_tree(**kwargs: Any) -> TeacherEnv:
    """``gymnasium.make("teachgym/SkillTree-v0", ...)``."""
    return make_env(ENV_KINDS["skill_tree"], **kwargs)


def make_vector_env(
    env_id: str,
    num_envs: int,
    config: ExperimentConfig | Mapping[str, Any] | None = None,
    *,
    autoreset_mode: Any = "NextStep",
    **overrides: Any,
) -> Any:
    """The vector env of ``env_id`` over one population of ``num_envs`` students
    (the ``gymnasium.make_vec`` vector entry point).

    One task for every sub-env; one population whose member ``i`` is the
    config's tiny student with seed ``config.seed + i``; one generator per
    sub-env. Only ``student: tiny`` (the students a population stacks), the
    SkillList env and ``backend: local`` are supported; anything else is one
    :class:`~teachgym.errors.ConfigError`.
    """
    if env_id != ENV_KINDS["skill_list"]:
        raise ConfigError(f"only {ENV_KINDS['skill_list']!r} has a vector env, not {env_id!r}")
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ConfigError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    cfg = build_config(config, {**overrides, "env": env_id})
    if cfg.student != "tiny" or cfg.backend != "local":
        raise ConfigError(
            f"the vector env trains a population of tiny students in this process: it needs "
            f"student: tiny and backend: local (got student: {cfg.student}, backend: {cfg.backend})"
        )
    unknown = sorted(set(cfg.student_kwargs) - OPTIONS)
    if unknown:
        raise ConfigError(f"student_kwargs the population does not support: {unknown}")
    registry.check_config(cfg)
    if cfg.threads is not None:
        set_torch_threads(cfg.threads)
    clients = Clients()
    task = build_task(cfg, clients)
    _require(cfg, "student", TaskCapabilities.of(task))
    seeds = [cfg.seed + i for i in range(num_envs)]
    population = tiny_population_for_task(task, seeds, **_kwargs(cfg, "student"))
    generators = [build_generator(cfg, task, clients) for _ in range(num_envs)]
    return SkillListVectorEnv(cfg, task, population, generators, autoreset_mode=autoreset_mode)


def make_skill_list_vector(num_envs: int = 1, **kwargs: Any) -> Any:
    """``gymnasium.make_vec("teachgym/SkillList-v0", num_envs=N, ...)``."""
    return make_vector_env(ENV_KINDS["skill_list"], num_envs, **kwargs)


def build_teacher(config: ExperimentConfig, env: Any) -> Any:
    """The config's teacher for ``env``, built on a :class:`TeacherView` of it (the
    train side only: no test split), with the env's shared LLM clients."""
    core = env.unwrapped
    view = TeacherView(core)
    clients = core.parts.clients if isinstance(core, TeacherEnv) else None
    return registry.build(
        "teacher",
        config.teacher,
        env=view,
        seed=config.seed,
        **component_kwargs(config, "teacher", clients),
    )


# -- Ray actors (backend: ray) --------------------------------------------------------
def build_student_in_worker(config: dict[str, Any], threads: int) -> tuple[Any, Any]:
    """In a student or evaluation actor: process state, then the task and the student."""
    cfg = build_config(config)
    prepare_process(cfg, threads=threads)
    task = build_task(cfg, Clients())
    return task, build_student(cfg, task)


def build_generator_in_worker(config: dict[str, Any], threads: int) -> tuple[Any, Any]:
    """In the generator's actor: global seeds, then the task and the generator (the
    generator's threads are not set: it is not a torch workload)."""
    cfg = build_config(config)
    prepare_process(cfg.model_copy(update={"threads": None}))
    clients = Clients()
    task = build_task(cfg, clients)
    return task, build_generator(cfg, task, clients)


class RemoteComponents:
    """The actors of one episode (student, generator, evaluators) and their proxies.

    ``close`` kills every actor and releases the placement group; the
    environment calls it from ``env.close()``.
    """

    def __init__(self, config: ExperimentConfig) -> None:
        ray = connect(runtime_env_for([config]))
        self.roles = role_bundles(config)
        self.actors: list[Any] = []
        self.placement = place(self.roles, config)
        data = config.model_dump(mode="json")
        try:
            handles = {}
            for role in self.roles:
                if role.role == "generator":
                    cls, build = GeneratorWorker, build_generator_in_worker
                else:
                    cls, build = StudentWorker, build_student_in_worker
                options: dict[str, Any] = {
                    "num_cpus": role.num_cpus,
                    "num_gpus": role.num_gpus,
                    "scheduling_strategy": self.placement.strategy(role.role),
                    "max_restarts": 0,
                }
                if role.memory:
                    options["memory"] = role.memory
                actor = ray.remote(cls).options(**options).remote(build, data, role.threads)
                self.actors.append(actor)
                handles[role.role] = actor
            evaluators = [handles[r.role] for r in self.roles if r.role.startswith("evaluation_")]
            self.student = StudentProxy(handles["student"], evaluators)
            self.generator = GeneratorProxy(handles["generator"])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        ray = require_ray()
        for actor in self.actors:
            with contextlib.suppress(Exception):  # an actor that died already
                ray.kill(actor, no_restart=True)
        self.actors.clear()
        self.placement.release()
