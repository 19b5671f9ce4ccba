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

import importlib
import inspect
from collections.abc import Callable
from typing import Any, Literal

from teachgym.errors import ConfigError

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
    },
}


def register(kind: Kind, name: str, target: str | Callable[..., Any]) -> None:
    """Add a short name. ``target`` is an import path or the factory itself."""
    if kind not in _BUILTIN:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {sorted(_BUILTIN)}")
    _BUILTIN[kind][name] = target  # type: ignore[assignment]


def names(kind: Kind) -> list[str]:
    return sorted(_BUILTIN[kind])


def resolve(kind: Kind, name: str) -> Callable[..., Any]:
    """The factory behind ``name``; errors list the valid names."""
    if kind not in _BUILTIN:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {sorted(_BUILTIN)}")
    target: Any = _BUILTIN[kind].get(name, name)
    if callable(target):
        return target
    if ":" not in target:
        raise ConfigError(
            f"unknown {kind} {name!r}: use one of {names(kind)} or an import path "
            f"'package.module:Class'"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and module_name.startswith(err.name):
            raise ConfigError(f"cannot import {kind} {name!r}: {err}") from err
        raise  # the module exists but an import inside it failed: a bug, keep the traceback
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"cannot import {kind} {name!r}: {module_name} has no {attr!r}") from None


def build(kind: Kind, name: str, **kwargs: Any) -> Any:
    """Build a component from config values.

    Arguments the constructor does not take, and a ``ValueError`` it raises
    (by convention, a rejected argument value), are reported as a
    :class:`~teachgym.errors.ConfigError` naming the component: those
    arguments came from the user's ``*_kwargs``. The original error is
    chained; any other exception is left alone, traceback and all.
    """
    factory = resolve(kind, name)
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
