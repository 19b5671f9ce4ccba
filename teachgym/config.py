"""The experiment configuration: one validated model for YAML, CLI and gymnasium.

``gymnasium.make(id, **overrides)``, ``teachgym run key=value`` and the YAML
files all go through :class:`ExperimentConfig`, so an unknown key or a bad
value fails the same way everywhere, with the key's name in the message.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from teachgym.errors import ConfigError
from teachgym.options import Decontamination
from teachgym.profiles import apply_profile

__all__ = [
    "ENV_IDS",
    "ENV_KINDS",
    "ConfigError",
    "Decontamination",
    "ExperimentConfig",
    "Resources",
    "RoleResources",
    "WandbSettings",
    "apply_overrides",
    "build_config",
    "config_diff",
    "default_config_path",
    "dump_config",
    "fingerprint",
    "load_config",
    "packaged_configs",
    "parse_cli_overrides",
    "read_yaml",
    "resolve_config_path",
    "short",
]

#: The three envs: their kind (what a teacher class acts on) and their gymnasium id.
#: Every other table of envs (registration, teacher dispatch) is built from this one.
ENV_KINDS: dict[str, str] = {
    "skill_list": "teachgym/SkillList-v0",
    "open_ended": "teachgym/OpenEnded-v0",
    "skill_tree": "teachgym/SkillTree-v0",
}
ENV_IDS = tuple(ENV_KINDS.values())


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


class WandbSettings(BaseModel):
    """Where a run logs to wandb (``wandb: true`` means these defaults).

    ``mode`` overrides the automatic choice (offline unless an API key is
    configured, see :func:`teachgym.experiments.tracking.wandb_mode`).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    project: str | None = Field(
        default=None, description="None: $WANDB_PROJECT, else 'teachgym'", min_length=1
    )
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)
    notes: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None


def is_teacher_path(name: Any) -> bool:
    """Whether a ``teacher`` value is a directory path (a saved learned teacher) rather
    than a registered name or an import path ``module:Class``.

    >>> is_teacher_path("runs/ppo-teacher"), is_teacher_path("curriculum")
    (True, False)
    >>> is_teacher_path("my_teachers:Greedy"), is_teacher_path("./ppo")
    (False, True)
    """
    if not isinstance(name, str) or ":" in name:
        return False
    return "/" in name or name.startswith(("~", "."))


class ExperimentConfig(BaseModel):
    """Everything that defines one episode.

    Component keys (``task``, ``student``, ``generator``, ``teacher``) take a
    registered short name or an import path ``package.module:Class``; the
    matching ``*_kwargs`` mapping is passed to its constructor.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    env: str = Field(default=ENV_IDS[0], description=f"one of {', '.join(ENV_IDS)}")
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
    wandb: bool | WandbSettings = Field(
        default=False,
        description="log to wandb: true (project teachgym), or a mapping of project, entity, "
        "tags, notes and mode",
    )

    @property
    def wandb_settings(self) -> WandbSettings | None:
        """The wandb settings of a run that logs to wandb, else ``None``."""
        if self.wandb is False:
            return None
        return WandbSettings() if self.wandb is True else self.wandb

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

    @model_validator(mode="before")
    @classmethod
    def _saved_teacher(cls, data: Any) -> Any:
        """``teacher=<dir>`` (a path, not a name or ``module:Class``) means the saved
        learned teacher in that directory: ``teacher: ppo`` with ``teacher_kwargs.path``,
        made absolute so a Ray worker in another working directory finds it."""
        if not isinstance(data, dict) or not is_teacher_path(data.get("teacher")):
            return data
        kwargs = data.get("teacher_kwargs") or {}
        if not isinstance(kwargs, dict):
            return data  # the field's own validation reports it
        path = str(Path(data["teacher"]).expanduser().resolve())
        if "path" in kwargs and kwargs["path"] != path:
            raise ValueError(
                f"teacher={data['teacher']!r} is a saved teacher's directory but "
                f"teacher_kwargs.path={kwargs['path']!r} names another"
            )
        return {**data, "teacher": "ppo", "teacher_kwargs": {**kwargs, "path": path}}

    @field_validator("env")
    @classmethod
    def _known_env(cls, value: str) -> str:
        if value not in ENV_IDS:
            raise ValueError(f"Input should be one of {', '.join(map(repr, ENV_IDS))}")
        return value

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.examples_per_step > self.budget:
            raise ValueError(
                f"examples_per_step={self.examples_per_step} exceeds budget={self.budget}"
            )
        return self


#: The largest config file read; a bigger one is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20
#: Characters of a value shown in an error message; the rest is elided.
VALUE_CHARS = 200


def short(value: Any, limit: int = VALUE_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages.

    A config value can be megabytes long (a pasted file, a YAML bomb's
    expansion); an error line must stay one readable line.

    >>> short("x" * 500, limit=10)
    "'xxxxxxxx… (502 chars)"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text)} chars)"


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases.

    An alias (``*name``) re-uses a node, and nested aliases expand
    exponentially (a few hundred bytes become gigabytes: the "billion laughs"
    bomb). A config never needs one, so the first alias is an error.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise yaml.YAMLError(
                f"YAML aliases are not allowed (*{event.anchor} at line {mark.line + 1}, "
                f"column {mark.column + 1}); write the value out"
            )
        return super().compose_node(parent, index)


def read_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text`` without aliases; any problem is one :class:`ConfigError` line."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: {_yaml_problem(err)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong and where."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"invalid YAML: {err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(err)


def _coerce(text: str) -> Any:
    """A command-line value as YAML reads it: ``3`` is an int, ``[a, b]`` a list.

    Text that is not valid YAML stays a string; an alias is still refused.
    """
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as err:
        if "aliases are not allowed" in str(err):
            raise ConfigError(f"value {short(text)}: {err}") from None
        return text
    except RecursionError:
        raise ConfigError(f"value {short(text)}: YAML nested too deeply") from None


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``student_kwargs.lr``) in a nested mapping, returning a copy."""
    out = copy.deepcopy(data) if data else {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {short(key)}: {short(part)} is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def parse_cli_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["seed=3", "student_kwargs.lr=1e-3"]`` -> ``{"seed": 3, "student_kwargs.lr": 0.001}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {short(item)} is not of the form key=value")
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
                lines.append(f"unknown config key {short(key)}{_suggest(key)}")
            else:
                lines.append(f"{key}: {e['msg']} (got {short(e.get('input'))})")
        raise ConfigError("invalid config: " + "; ".join(lines)) from None


def _suggest(key: str) -> str:
    """'; did you mean ...' for a mistyped top-level or nested key, else ''."""
    head, _, leaf = key.rpartition(".")
    if head:
        model: Any = ExperimentConfig
        for part in head.split("."):
            field = getattr(model, "model_fields", {}).get(part)
            if field is None:
                return ""
            model = field.annotation
        names = list(getattr(model, "model_fields", {}))
    else:
        names = list(ExperimentConfig.model_fields)
    close = difflib.get_close_matches(leaf, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: Config keys whose relative paths name input files and are read relative to the
#: config file that sets them (outputs such as cache directories stay relative to
#: the working directory).
PATH_KEYS = (
    ("task_kwargs", "path"),
    ("generator_kwargs", "prompt_file"),
    ("teacher_kwargs", "prompt_file"),
    ("teacher_kwargs", "path"),
)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative input paths of ``data`` made absolute against ``base`` (a saved
    teacher's directory given as ``teacher`` too)."""
    teacher = data.get("teacher")
    if is_teacher_path(teacher) and not Path(teacher).expanduser().is_absolute():
        data["teacher"] = str((base / Path(teacher).expanduser()).resolve())
    for section, key in PATH_KEYS:
        block = data.get(section)
        if isinstance(block, dict) and isinstance(block.get(key), str):
            value = Path(block[key]).expanduser()
            if not value.is_absolute():
                block[key] = str((base / value).resolve())
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file, with its input paths made absolute.

    Everything that can be wrong with the file (missing, a directory, too
    big, not UTF-8, invalid YAML, an alias, not a mapping) is one
    :class:`ConfigError` line.
    """
    path = Path(path)
    where = f"config file {short(str(path))}"
    if path.is_dir():
        raise ConfigError(f"{where} is a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where} is {size:,} bytes; configs are limited to 1 MiB")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{where} cannot be read: {err.strerror}") from None
    data = read_yaml(text, where) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping, not {type(data).__name__}")
    return _resolve_paths(data, path.resolve().parent)


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Read a YAML config (a path, a packaged config's name, or the default) and apply
    overrides. Relative input paths in the file are read relative to the file, those
    in ``overrides`` relative to the working directory."""
    data = read_config_file(resolve_config_path(path))
    overrides = dict(overrides or {})
    for section, key in PATH_KEYS:
        dotted = f"{section}.{key}"
        if isinstance(overrides.get(dotted), str):
            overrides[dotted] = str(Path(overrides[dotted]).expanduser().resolve())
    return build_config(data, overrides)


def default_config_path() -> Path:
    """The packaged default experiment, usable from any directory."""
    return _configs_dir() / "default.yaml"


def _configs_dir() -> Path:
    return Path(str(files("teachgym.experiments") / "configs"))


def packaged_configs() -> dict[str, str]:
    """Packaged config names (``teachgym run smoke``) and the first line of their comment."""
    out: dict[str, str] = {}
    for path in sorted(_configs_dir().glob("*.yaml")):
        words: list[str] = []
        for line in path.read_text().splitlines():
            if not line.startswith("#") or not line.strip("# "):
                break
            words += line.strip("# ").split()
        text = " ".join(words)
        end = text.find(". ")
        text = text[: end + 1] if end >= 0 else text
        if len(text) > 100:
            text = text[:100].rsplit(" ", 1)[0].rstrip(",;:(") + " …"
        out[path.stem] = text
    return out


def resolve_config_path(name: str | Path | None) -> Path:
    """A config argument as a file: an existing path, else a packaged config's name.

    ``None`` is the packaged default. A name that is neither is one error line
    listing the packaged configs and the nearest one.
    """
    if name is None:
        return default_config_path()
    path = Path(name)
    if path.exists():
        return path
    text = str(name)
    stem = text[:-5] if text.endswith(".yaml") else text
    if "/" not in stem and (_configs_dir() / f"{stem}.yaml").is_file():
        return _configs_dir() / f"{stem}.yaml"
    names = list(packaged_configs())
    close = difflib.get_close_matches(stem, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"config {short(text)} does not exist: it is neither a file nor a packaged config "
        f"({', '.join(names)}){hint}"
    )


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
