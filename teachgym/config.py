"""The experiment configuration: one validated model for YAML, CLI and gymnasium.

``gymnasium.make(id, **overrides)``, ``teachgym run key=value`` and the YAML
files all go through :class:`ExperimentConfig`, so an unknown key or a bad
value fails the same way everywhere, with the key's name in the message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from teachgym.errors import ConfigError
from teachgym.profiles import apply_profile

__all__ = [
    "ENV_IDS",
    "ConfigError",
    "ExperimentConfig",
    "Resources",
    "RoleResources",
    "apply_overrides",
    "build_config",
    "config_diff",
    "default_config_path",
    "dump_config",
    "fingerprint",
    "load_config",
    "parse_cli_overrides",
]

ENV_IDS = ("teachgym/SkillList-v0", "teachgym/OpenEnded-v0", "teachgym/SkillTree-v0")


class RoleResources(BaseModel):
    """What one Ray actor of a role asks the cluster for (``backend: ray``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_cpus: float | None = Field(
        default=None,
        ge=0,
        description="CPUs; None: the run's `threads` for the student and evaluation, 0 for "
        "the generator. Torch threads in the actor follow it (at least 1)",
    )
    num_gpus: float = Field(default=0, ge=0)
    memory: int | None = Field(default=None, ge=0, description="bytes of RAM to reserve")


class EvaluationResources(RoleResources):
    """Evaluation workers: ``workers: 0`` evaluates inside the student's actor."""

    workers: int = Field(default=0, ge=0, description="actors that each score a shard of a split")


class Resources(BaseModel):
    """Ray resources per role, and how the roles are placed (``backend: ray``).

    ``placement: colocate`` packs the student, generator and evaluation
    bundles onto as few nodes as possible (one GPU shared by training and
    evaluation); ``spread`` puts them on distinct nodes where it can.
    Requests the cluster cannot meet fail after ``timeout_s`` with a message
    naming them; a request larger than any node fails at once.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    student: RoleResources = Field(default_factory=RoleResources)
    generator: RoleResources = Field(default_factory=RoleResources)
    evaluation: EvaluationResources = Field(default_factory=EvaluationResources)
    placement: Literal["colocate", "spread"] = "colocate"
    timeout_s: float = Field(default=60.0, gt=0)
    max_restarts: int = Field(
        default=2, ge=0, description="times a run rebuilds dead workers and resumes"
    )


class Decontamination(BaseModel):
    """How close to a validation or test prompt a generated prompt may come.

    An exact copy (after normalisation) is always dropped. Beyond that, a
    prompt that shares a run of ``ngram`` tokens with an evaluation prompt is
    dropped, and so is one of at least ``overlap_min_tokens`` tokens whose
    rarity-weighted word and word-pair overlap with a single evaluation prompt
    reaches ``overlap`` (a paraphrase keeps the numbers and names). ``null``
    turns a rule off. Short prompts (``12+34=``) are never judged by overlap:
    two arithmetic problems share most of their few tokens without one being
    a copy of the other. See :class:`~teachgym.envs.filtering.ExampleFilter`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    ngram: int | None = Field(default=13, ge=1)
    overlap: float | None = Field(default=0.45, gt=0.0, le=1.0)
    overlap_min_tokens: int = Field(default=12, ge=1)


class ExperimentConfig(BaseModel):
    """Everything that defines one episode.

    Component keys (``task``, ``student``, ``generator``, ``teacher``) take a
    registered short name or an import path ``package.module:Class``; the
    matching ``*_kwargs`` mapping is passed to its constructor.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    env: Literal["teachgym/SkillList-v0", "teachgym/OpenEnded-v0", "teachgym/SkillTree-v0"] = (
        "teachgym/SkillList-v0"
    )
    seed: int = Field(default=0, ge=0)
    task: str = "arithmetic"
    task_kwargs: dict[str, Any] = Field(default_factory=dict)
    student: str = "tiny"
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    generator: str = "procedural"
    generator_kwargs: dict[str, Any] = Field(default_factory=dict)
    teacher: str = "curriculum"
    teacher_kwargs: dict[str, Any] = Field(default_factory=dict)
    budget: int = Field(
        default=132_000, gt=0, description="examples the student may train on in an episode"
    )
    examples_per_step: int = Field(default=6_000, gt=0)
    max_steps: int = Field(default=50, gt=0)
    cost_per_example: float = Field(default=0.0, ge=0.0)
    max_errors: int = Field(default=24, ge=0, description="error examples shown per step")
    dedup: Literal["step", "episode"] = "step"
    decontamination: Decontamination = Field(default_factory=Decontamination)
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch CPU threads; None: every core, at most 8 (the runner records the "
        "number it used, since another count gives other floats)",
    )
    backend: Literal["local", "ray"] = "local"
    resources: Resources = Field(default_factory=Resources)
    llm: dict[str, Any] = Field(
        default_factory=dict,
        description="the LLM client spec (backend, model, base_url, ...) given to the built-in "
        "`llm` teacher and generator when their own *_kwargs have no `llm`",
    )
    wandb: bool = False
    profile: str | None = Field(
        default=None,
        description="a stress profile (teachgym.profiles: default, unlearnable, forgetting, "
        "hidden, varied), applied when the config is built",
    )

    def component_kwargs(self, kind: Literal["task", "generator", "teacher"]) -> dict[str, Any]:
        """``task_kwargs``, ``generator_kwargs`` or ``teacher_kwargs``, with the shared ``llm``
        spec added where a built-in component needs an LLM and names none, so one endpoint
        serves every side: the ``llm`` generator and teacher, and a task whose skills an
        LLM discovers (``task_kwargs.skills: discovered``)."""
        if kind == "task":
            kwargs = dict(self.task_kwargs)
            if kwargs.get("skills") == "discovered" and self.llm and "llm" not in kwargs:
                kwargs["llm"] = dict(self.llm)
            return kwargs
        name = self.generator if kind == "generator" else self.teacher
        kwargs = dict(self.generator_kwargs if kind == "generator" else self.teacher_kwargs)
        if name == "llm" and self.llm and "llm" not in kwargs:
            kwargs["llm"] = dict(self.llm)
        return kwargs

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.examples_per_step > self.budget:
            raise ValueError(
                f"examples_per_step={self.examples_per_step} exceeds budget={self.budget}"
            )
        return self


def _coerce(text: str) -> Any:
    """A command-line value as YAML reads it: ``3`` is an int, ``[a, b]`` a list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``student_kwargs.lr``) in a nested mapping, returning a copy."""
    out = yaml.safe_load(yaml.safe_dump(data)) if data else {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {key!r}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def parse_cli_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["seed=3", "student_kwargs.lr=1e-3"]`` -> ``{"seed": 3, "student_kwargs.lr": 0.001}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = _coerce(value)
    return out


def build_config(
    base: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """Validate ``base`` with ``overrides`` applied; errors name the key and value.

    A ``profile`` is applied here, over both (:func:`teachgym.profiles.apply_profile`).
    """
    if isinstance(base, ExperimentConfig):
        base = base.model_dump()
    data = apply_overrides(dict(base or {}), dict(overrides or {}))
    explicit = apply_overrides({}, dict(overrides or {}))
    data = apply_profile(data, explicit, (base or {}).get("profile"), apply_overrides)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "config"
            if e["type"] == "extra_forbidden":
                lines.append(f"unknown config key {key!r}")
            else:
                lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError("invalid config: " + "; ".join(lines)) from None


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Read a YAML config (or the packaged default) and apply overrides."""
    if path is None:
        path = default_config_path()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping, not {type(data).__name__}"
        )
    return build_config(data, overrides)


def default_config_path() -> Path:
    """The packaged default experiment, usable from any directory."""
    from importlib.resources import files

    return Path(str(files("teachgym.experiments") / "configs" / "default.yaml"))


def dump_config(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)


def fingerprint(config: ExperimentConfig) -> str:
    """A short hash of the whole config: equal hashes, same experiment.

    >>> fingerprint(ExperimentConfig()) == fingerprint(ExperimentConfig())
    True
    >>> fingerprint(ExperimentConfig()) == fingerprint(ExperimentConfig(seed=1))
    False
    """
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def config_diff(a: ExperimentConfig, b: ExperimentConfig) -> list[str]:
    """Dotted keys whose values differ, with both values, for error messages.

    >>> config_diff(ExperimentConfig(), ExperimentConfig(seed=2, student_kwargs={"lr": 1}))
    ['seed: 0 -> 2', 'student_kwargs.lr: None -> 1']
    """
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y), key=str):
                walk(x.get(key), y.get(key), f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix[:-1]}: {x!r} -> {y!r}")

    walk(a.model_dump(mode="json"), b.model_dump(mode="json"), "")
    return out
