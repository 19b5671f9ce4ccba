"""Typed component options (teachgym.options): one default per option, strict checks,
one-line errors, and user components still checked by their signature."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import Field

from teachgym import registry
from teachgym.config import ENV_IDS
from teachgym.errors import ConfigError
from teachgym.options import Options, UnknownOption, takes
from teachgym.students.hf import HFStudent
from teachgym.students.options import HFStudentOptions
from teachgym.students.tiny import TinyOptions, make_tiny_student


class _Opts(Options):
    rate: float = Field(default=0.5, gt=0.0, description="a rate")
    steps: int = Field(default=3, ge=1)


def test_a_default_written_in_the_signature_too_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="its default is written once, in _Opts"):

        @takes(_Opts)
        def _f(*, rate: float = 0.5, steps: int) -> None: ...


def test_the_signature_shows_the_models_defaults_and_calls_get_validated_values() -> None:
    @takes(_Opts)
    def f(x: int, *, rate: float, steps: int) -> tuple[int, float, int]:
        return x, rate, steps

    assert inspect.signature(f).parameters["rate"].default == 0.5
    assert f(1) == (1, 0.5, 3)
    assert f(2, steps=4) == (2, 0.5, 4)
    assert f(3, rate=1) == (3, 1.0, 3)  # a float option takes an int
    with pytest.raises(ConfigError, match="f: steps True is invalid: Input should be a valid int"):
        f(1, steps=True)
    # An unknown keyword is still the TypeError Python gives, and a ConfigError line.
    with pytest.raises(UnknownOption, match="unknown option 'stpes'; did you mean 'steps'"):
        f(1, stpes=2)
    with pytest.raises(TypeError, match=r"valid options: rate=0\.5, steps=3"):
        f(1, stpes=2)


def test_hf_student_and_tiny_read_their_defaults_from_their_models() -> None:
    params = inspect.signature(HFStudent).parameters
    for name, field in HFStudentOptions.model_fields.items():
        assert params[name].default == field.get_default(call_default_factory=True), name
    tiny = inspect.signature(make_tiny_student).parameters
    assert tiny["lr"].default == TinyOptions.model_fields["lr"].default == 4e-3
    assert HFStudentOptions.model_fields["lr"].default == 1e-3


def _components() -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for kind in ("task", "student", "generator"):
        out += [(kind, name, None) for name in registry.names(kind)]  # type: ignore[arg-type]
    for name in registry.names("teacher"):
        factory = registry.resolve("teacher", name)
        out += [("teacher", name, env) for env in factory.env_ids() if env in ENV_IDS]
    return out


@pytest.mark.parametrize(("kind", "name", "env"), _components())
def test_every_built_in_component_with_options_declares_a_model(
    kind: str, name: str, env: str | None
) -> None:
    model = registry.options_model(kind, name, env)  # type: ignore[arg-type]
    if name == "uniform":  # takes no options at all
        assert model is None and registry.options(kind, name, env) == {}  # type: ignore[arg-type]
        return
    assert model is not None
    assert all(f.description for f in model.model_fields.values()), model.__name__
    with pytest.raises(ConfigError, match="unknown option 'no_such_option'; valid options"):
        registry.check_kwargs(kind, name, {"no_such_option": 1}, env)  # type: ignore[arg-type]


class _UserTeacher:
    def __init__(self, env: Any, seed: int = 0, *, gain: float = 2.0) -> None:
        self.gain = gain

    def act(self, observation: Any, info: Any) -> Any: ...
    def update(self, *args: Any) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def test_a_user_component_without_a_model_is_checked_by_its_signature() -> None:
    registry.register("teacher", "user_for_options_test", _UserTeacher)
    assert registry.options_model("teacher", "user_for_options_test") is None
    registry.check_kwargs("teacher", "user_for_options_test", {"gain": 3.0})
    with pytest.raises(ConfigError, match=r"unknown option 'gian'; did you mean 'gain'.*gain=2\.0"):
        registry.check_kwargs("teacher", "user_for_options_test", {"gian": 3.0})
    with pytest.raises(ConfigError, match="gain 'high' is invalid"):
        registry.check_kwargs("teacher", "user_for_options_test", {"gain": "high"})
