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
from collections.abc import Callable
from typing import Any, Literal

Kind = Literal["task", "student", "generator", "teacher"]

_BUILTIN: dict[str, dict[str, str]] = {
    "task": {
        "arithmetic": "teachgym.envs.tasks.arithmetic:ArithmeticTask",
    },
    "student": {
        "tiny": "teachgym.students.tiny:tiny_student_for_task",
        "hf": "teachgym.students.hf:hf_student_from_pretrained",
    },
    "generator": {
        "procedural": "teachgym.agents.generators.procedural:ProceduralGenerator",
    },
    "teacher": {
        "random": "teachgym.agents.policies.baselines:RandomTeacher",
        "uniform": "teachgym.agents.policies.baselines:UniformTeacher",
        "weakest": "teachgym.agents.policies.baselines:WeakestTeacher",
        "learning_progress": "teachgym.agents.policies.learning_progress:LearningProgressTeacher",
        "curriculum": "teachgym.agents.policies.curriculum:CurriculumTeacher",
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
        raise ValueError(
            f"unknown {kind} {name!r}: use one of {names(kind)} or an import path "
            f"'package.module:Class'"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {kind} {name!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"cannot import {kind} {name!r}: {module_name} has no {attr!r}") from None


def build(kind: Kind, name: str, **kwargs: Any) -> Any:
    factory = resolve(kind, name)
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise TypeError(f"cannot build {kind} {name!r}: {err}") from err
