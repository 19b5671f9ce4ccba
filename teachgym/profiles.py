"""Stress profiles: named bundles of config overrides, selected by the one key ``profile``.

After TeachMyAgent's stress tests (Romac et al., ICML 2021), each profile
changes the experiment in one way that a good teacher should cope with, so
that a sweep can grid over them (``--grid profile=default,unlearnable,...``)
and a leaderboard can show which teachers break where:

- ``default``: nothing changed.
- ``unlearnable``: 8 extra skills whose answers are noise (``task_kwargs.noise_skills``):
  more than half of the skills cannot be learned, and data spent on them is wasted.
- ``forgetting``: a forgetting student (``student: tiny_forgetting``, see
  :mod:`teachgym.students.forgetting`): after every 5th step's training the
  weights move a quarter of the way back to their initial values, so skills
  the teacher had taught are partly lost and must be noticed and taught again.
- ``hidden``: difficulty hidden from the teacher (``task_kwargs.hide_difficulty``):
  anonymous skill names ``s0``, ``s1``, ... in an order shuffled by the
  episode seed, and every prompt the same length.
- ``varied``: the student's width drawn per seed from 64, 128 and 256
  (``student_kwargs.hidden_size = (64, 128, 256)[seed % 3]``). One profile
  rather than three, so a leaderboard row averages over students as
  TeachMyAgent's "varied students" does, and because the width follows the
  seed, every teacher meets the same student on the same seed and the paired
  comparison stays paired.

A profile is applied when the config is built (:func:`teachgym.config.build_config`),
after the config file and the overrides are merged, and its settings win over the
config file's; an override that sets one of them to another value is refused
(there is no silent loser). Applying a profile twice changes nothing, so a resolved
config (``config.yaml`` of a run) builds to itself, and rebuilding it with another
seed recomputes the seed-dependent settings. This module is data only: it lives in
the core package so that the config module can use it without importing the layers
above it (the task and the student read the keys it sets).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from teachgym.errors import ConfigError

__all__ = ["PROFILES", "VARIED_WIDTHS", "apply_profile", "profile_overrides"]

#: The student widths of the ``varied`` profile, chosen by ``seed % 3``.
VARIED_WIDTHS = (64, 128, 256)
#: The ``forgetting`` profile's partial reset: every 5th step, a quarter of the way back
#: to the initial weights: enough to cost a trained skill a clear share of its accuracy,
#: not all of it (docs/decisions.md).
FORGETTING = {"forget_every": 5, "forget_fraction": 0.25}
#: The noise skills of the ``unlearnable`` profile (next to the default 7 skills).
UNLEARNABLE_NOISE = 8


def _task(name: str) -> Callable[[Mapping[str, Any]], None]:
    def need(data: Mapping[str, Any]) -> None:
        if data.get("task", "arithmetic") != "arithmetic":
            raise ConfigError(
                f"profile {name!r} sets arithmetic task options; "
                f"it needs task: arithmetic, not {data.get('task')!r}"
            )

    return need


def _seed(data: Mapping[str, Any]) -> int:
    seed = data.get("seed", 0)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0


def _default(data: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _unlearnable(data: Mapping[str, Any]) -> dict[str, Any]:
    _task("unlearnable")(data)
    return {"task_kwargs.noise_skills": UNLEARNABLE_NOISE}


def _forgetting(data: Mapping[str, Any]) -> dict[str, Any]:
    if data.get("student", "tiny") not in ("tiny", "tiny_forgetting"):
        raise ConfigError(
            f"profile 'forgetting' makes the tiny student forget; it needs student: tiny, "
            f"not {data.get('student')!r}"
        )
    return {"student": "tiny_forgetting"} | {
        f"student_kwargs.{k}": v for k, v in FORGETTING.items()
    }


def _hidden(data: Mapping[str, Any]) -> dict[str, Any]:
    _task("hidden")(data)
    return {"task_kwargs.hide_difficulty": True, "task_kwargs.shuffle_seed": _seed(data)}


def _varied(data: Mapping[str, Any]) -> dict[str, Any]:
    if data.get("student", "tiny") not in ("tiny", "tiny_forgetting"):
        raise ConfigError(
            f"profile 'varied' sets the tiny student's width; it needs student: tiny, "
            f"not {data.get('student')!r}"
        )
    return {"student_kwargs.hidden_size": VARIED_WIDTHS[_seed(data) % len(VARIED_WIDTHS)]}


#: Profile name -> the overrides it makes, computed from the merged config data.
PROFILES: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "default": _default,
    "unlearnable": _unlearnable,
    "forgetting": _forgetting,
    "hidden": _hidden,
    "varied": _varied,
}


def profile_overrides(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted-key overrides of profile ``name`` for config ``data``.

    >>> profile_overrides("varied", {"seed": 4})
    {'student_kwargs.hidden_size': 128}
    """
    if not isinstance(name, str) or name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}: use one of {sorted(PROFILES)}")
    return PROFILES[name](data)


def _lookup(data: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def apply_profile(
    data: dict[str, Any],
    explicit: Mapping[str, Any],
    base_profile: Any,
    apply_overrides: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """``data`` (merged config) with its ``profile``'s overrides applied.

    ``explicit`` is what the caller asked for on top of the base config (the
    command line's ``key=value``, ``gymnasium.make``'s keywords), nested; one
    that sets a profile's key to another value is an error. ``base_profile``
    is the base config's profile: a config built with one profile cannot be
    switched to another (the first one's settings are in it already).
    """
    name = data.get("profile")
    if base_profile is not None and name != base_profile:
        raise ConfigError(
            f"the config already has profile {base_profile!r}; a profile cannot be "
            f"replaced by {name!r}: start from a config without a profile"
        )
    if name is None:
        return data
    overrides = profile_overrides(name, data)
    for key, value in overrides.items():
        found, asked = _lookup(explicit, key)
        if found and asked != value:
            raise ConfigError(
                f"profile {name!r} sets {key}={value!r}; drop the override {key}={asked!r} "
                f"or the profile"
            )
    return apply_overrides(data, overrides)
