"""Typed options of the built-in components: one pydantic model per component.

A built-in task, student, generator or teacher declares what it takes from
its ``*_kwargs`` as an :class:`Options` subclass (the way TRL's
``SFTConfig`` does): a field per option with its type, its default, its
bounds and a description. The model is the one place a default is written.
The constructor (or registry factory) is decorated with :func:`takes`, which

- reads the model's defaults into the signature (so ``inspect.signature``,
  ``help()`` and direct Python calls see them), and refuses at import time a
  signature that writes an option's default a second time;
- validates the keyword arguments of every call against the model, and
  passes the validated values on;
- marks the callable with the model (``callable.Options``), which is what
  :mod:`teachgym.registry` checks a config's ``*_kwargs`` against and what
  ``teachgym config COMPONENT`` prints.

Validation is strict (``strict=True``): a bool is not an int, ``"3"`` is not
a number, and a float option accepts an int. A problem is one
:class:`~teachgym.errors.ConfigError` line: an unknown key lists the valid
ones with their defaults and the nearest one; a wrong value names the key.

A user's own component needs none of this: the registry checks its keyword
arguments against its signature, as before.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from teachgym.errors import ConfigError

__all__ = [
    "Decontamination",
    "OptionDoc",
    "Options",
    "UnknownOption",
    "derive",
    "describe_options",
    "explain",
    "options_of",
    "takes",
]

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound="Options")

#: Characters of a default or a value shown in a message.
_VALUE_CHARS = 40


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} chars)"


class UnknownOption(ConfigError, TypeError):
    """A keyword that is not an option: a :class:`ConfigError` (one line from the CLI),
    and still the ``TypeError`` Python raises for an unexpected keyword argument."""


class Options(BaseModel):
    """Base of every component's options: unknown keys refused, types strict, no NaN."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        frozen=True,
        arbitrary_types_allowed=True,
        protected_namespaces=(),
    )

    @classmethod
    def check(cls: type[M], values: Mapping[str, Any], where: str = "") -> M:
        """``values`` validated, or one :class:`ConfigError` line saying what is wrong."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            message = explain(cls, err, where or cls.__name__)
            unknown = any(e["type"] == "extra_forbidden" for e in err.errors())
            raise (UnknownOption if unknown else ConfigError)(message) from None

    @classmethod
    def summary(cls) -> str:
        """``name=default, ...`` for every option, in declaration order."""
        return ", ".join(
            f"{doc.name}={_short(doc.default, _VALUE_CHARS)}" for doc in describe_options(cls)
        )


class Decontamination(Options):
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

    model_config = ConfigDict(frozen=False, validate_assignment=True)

    ngram: int | None = Field(
        default=13, ge=1, description="tokens in a shared run that drop a prompt; null: off"
    )
    overlap: float | None = Field(
        default=0.45,
        gt=0.0,
        le=1.0,
        description="weighted word and word-pair overlap that drops a prompt; null: off",
    )
    overlap_min_tokens: int = Field(
        default=12, ge=1, description="the shortest prompt (in tokens) the overlap rule judges"
    )


@dataclass(frozen=True)
class OptionDoc:
    """One option as ``teachgym config`` shows it."""

    name: str
    type: str
    default: Any
    description: str


def type_name(annotation: Any) -> str:
    """A type as a reader writes it: ``int | None``, ``Literal['hf', 'vllm']``."""
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    for prefix in ("typing.", "collections.abc.", "pathlib."):
        text = text.replace(prefix, "")
    return text.replace("NoneType", "None")


def describe_options(model: type[BaseModel]) -> list[OptionDoc]:
    """Every option of ``model``: name, type, default and description."""
    out = []
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        out.append(OptionDoc(name, type_name(field.annotation), default, field.description or ""))
    return out


def explain(model: type[BaseModel], err: ValidationError, where: str) -> str:
    """A validation error of ``model`` as one line: an unknown key with the valid ones
    and the nearest, or the key whose value is wrong and why."""
    errors = err.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        loc = [str(p) for p in unknown[0]["loc"]]
        owner = _nested(model, loc[:-1])
        names = list(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(loc[-1], names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        if owner is not None and issubclass(owner, Options):
            valid = owner.summary()
        else:
            valid = ", ".join(names)
        key = ".".join(loc)
        return f"{where}: unknown option {_short(key)}; {hint}valid options: {valid or 'none'}"
    first = errors[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:  # a check across options (a model validator)
        return f"{where}: {message}"
    key = _key(model, first["loc"])
    return f"{where}: {key} {_short(first.get('input'))} is invalid: {message}"


def _key(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """The option an error's location names, without pydantic's union-member tags
    (``skills.literal['gold','none']`` is ``skills``); list indices are kept."""
    parts: list[str] = []
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
        elif current is not None and part in current.model_fields:
            parts.append(part)
            current = _nested(current, [part])
    return ".".join(parts) or ".".join(map(str, loc))


def _nested(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The model an option path such as ``["discovery"]`` leads to, through optional fields."""
    current: Any = model
    for part in path:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return None
    return current  # type: ignore[no-any-return]


def derive(
    name: str,
    bases: tuple[type[Options], ...],
    doc: str,
    *,
    fields: Mapping[str, tuple[Any, Any]] | None = None,
    **defaults: Any,
) -> type[Options]:
    """An options model made of ``bases``, with more ``fields`` (``name: (type, Field)``)
    and other ``defaults`` for inherited options (a preset of a component: ``tiny`` is
    :class:`HFStudent` with other learning rates). An overridden option keeps its
    type, bounds and description; only its default changes, written here once."""
    changed: dict[str, Any] = {}
    for key, value in defaults.items():
        owner = next((b for b in bases if key in b.model_fields), None)
        if owner is None:
            raise TypeError(f"{name}: no option {key!r} in {[b.__name__ for b in bases]}")
        info = copy.copy(owner.model_fields[key])
        info.default, info.default_factory = value, None
        changed[key] = (owner.model_fields[key].annotation, info)
    model = create_model(  # type: ignore[call-overload]
        name,
        __base__=bases,
        __doc__=doc,
        __module__=sys._getframe(1).f_globals.get("__name__", __name__),
        **dict(fields or {}),
        **changed,
    )
    return model  # type: ignore[no-any-return]


def options_of(target: Any) -> type[Options] | None:
    """The options model a component declares: on the factory, or a class's ``__init__``."""
    model = getattr(target, "Options", None)
    if model is None and inspect.isclass(target):
        model = getattr(target.__init__, "Options", None)
    if isinstance(model, type) and issubclass(model, Options):
        return model
    return None


def takes(model: type[Options]) -> Callable[[F], F]:
    """Make ``model`` the options of the decorated constructor or factory.

    Every field of ``model`` that the function names is a keyword parameter
    *without* a default in the source (the model's default is put
    into the signature); a field it does not name reaches it through
    ``**kwargs`` and is passed on only when the caller set it, so the callee
    it forwards to keeps its own default. Other parameters (the injected
    ``task``, ``env``, ``seed``; Python-only ones such as a callable) pass
    through untouched. A keyword argument that is none of these is refused by
    the model with the list of valid options.
    """

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        fields = model.model_fields
        public, named, rest = _options_signature(fn, signature, model)
        where = fn.__qualname__.removesuffix(".__init__")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in signature.parameters}
            if rest is None and extra:  # not a parameter: the model names the valid ones
                model.check(extra, where)
            bound = public.bind_partial(*args, **kwargs)
            given = {k: v for k, v in bound.arguments.items() if k in fields}
            given.update({k: v for k, v in extra.items() if k in fields})
            opts = model.check(given, where)
            for name in named:
                bound.arguments[name] = getattr(opts, name)
            if rest is not None:
                forwarded = {k: v for k, v in extra.items() if k not in fields}
                forwarded.update({k: getattr(opts, k) for k in given if k not in named})
                bound.arguments[rest] = forwarded
            return fn(*bound.args, **bound.kwargs)

        wrapper.__signature__ = public  # type: ignore[attr-defined]
        wrapper.Options = model  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _options_signature(
    fn: Callable[..., Any], signature: inspect.Signature, model: type[Options]
) -> tuple[inspect.Signature, list[str], str | None]:
    """``fn``'s public signature for :func:`takes`: the model's defaults put into the
    parameters that name its options; with the names of those options and of ``fn``'s
    ``**kwargs`` (``None`` without one).

    Refuses (``TypeError``, at import time) an option whose default the signature writes
    a second time, an option that is not a keyword, and an option ``fn`` neither names
    nor can receive through ``**kwargs``.
    """
    fields = model.model_fields
    named: list[str] = []
    params = []
    rest: str | None = None  # the name of the function's **kwargs, if any
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            rest = param.name
        if param.name in fields:
            if param.default is not param.empty:
                raise TypeError(
                    f"{fn.__qualname__}: option {param.name!r} has a default in the "
                    f"signature; its default is written once, in {model.__name__}"
                )
            if param.kind not in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
                raise TypeError(f"{fn.__qualname__}: option {param.name!r} is not a keyword")
            default = fields[param.name].get_default(call_default_factory=True)
            params.append(param.replace(default=default))
            named.append(param.name)
        else:
            params.append(param)
    if rest is None and set(fields) - set(named):
        raise TypeError(
            f"{fn.__qualname__} neither names nor forwards the option(s) "
            f"{sorted(set(fields) - set(named))} of {model.__name__}"
        )
    return signature.replace(parameters=params), named, rest
