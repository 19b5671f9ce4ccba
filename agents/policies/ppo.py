"""A learned SkillList teacher: a Stable-Baselines3 PPO policy, and its file format.

The policy is trained by ``teachgym train-teacher`` (:mod:`teachgym.experiments.teacher_training`)
on the population vector env and acts here as ``teacher=<saved dir>`` on any
SkillList experiment with the same skills. This module owns the three things
training and acting must agree on, so they cannot drift apart:

- the **features** the policy reads (:func:`features`): accuracy per skill,
  examples used per skill as a fraction of the budget, and the budget left as
  a fraction. Fractions, not counts, so a policy trained on a short-episode
  profile reads the same numbers on a longer experiment;
- the **action map** (:func:`policy_weights`): the policy outputs one value in
  ``[-1, 1]`` per skill (the symmetric box SB3's Gaussian policy is built
  for) and the share of a skill is ``exp(ACTION_SCALE * value)``, so every
  skill keeps a non-zero share and ratios up to ``exp(2 * ACTION_SCALE)``
  are reachable;
- the **saved teacher** (:func:`save_teacher` / :func:`load_teacher`): a
  directory with SB3's ``policy.zip`` and ``teacher.json`` (format tag,
  skill order, how it was trained). Loading checks the format and, when the
  teacher acts, that the env's skills are the ones it was trained on.

Stable-Baselines3 is the ``rl`` extra (``pip install "teachgym[rl]"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from teachgym.agents.policies.base import SkillListTeacher, to_action
from teachgym.errors import ConfigError
from teachgym.options import Options, takes

__all__ = [
    "ACTION_SCALE",
    "FORMAT",
    "PPOTeacher",
    "SavedTeacher",
    "features",
    "is_saved_teacher",
    "load_teacher",
    "policy_weights",
    "save_teacher",
]

#: ``teacher.json``'s format tag; a directory without it is not a saved teacher.
FORMAT = "teachgym-ppo-teacher/1"
#: Share of a skill = exp(ACTION_SCALE * policy output in [-1, 1]).
ACTION_SCALE = 2.0
POLICY_FILE = "policy.zip"
META_FILE = "teacher.json"


def features(observation: Mapping[str, Any], budget: float) -> np.ndarray:
    """The policy's input: ``[accuracy (K), examples_used / budget (K), budget_left / budget]``.

    >>> obs = {"accuracy": [0.5, 1.0], "examples_used": [300, 100], "budget_left": [600]}
    >>> features(obs, 1000).tolist()
    [0.5, 1.0, 0.30000001192092896, 0.10000000149011612, 0.6000000238418579]
    """
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget!r}")
    acc = np.nan_to_num(np.asarray(observation["accuracy"], dtype=np.float64).reshape(-1))
    used = np.asarray(observation["examples_used"], dtype=np.float64).reshape(-1) / budget
    left = np.asarray(observation["budget_left"], dtype=np.float64).reshape(-1) / budget
    return np.clip(np.concatenate([acc, used, left]), 0.0, 1.0).astype(np.float32)


def feature_size(num_skills: int) -> int:
    """Length of :func:`features` for ``num_skills`` skills."""
    return 2 * num_skills + 1


def policy_weights(output: Any) -> np.ndarray:
    """A SkillList action (largest weight 1) from the policy's output.

    Outputs are clipped to [-1, 1] first, so -3.0 weighs as much as -1.0:

    >>> [round(float(w), 3) for w in policy_weights([0.0, 0.5, -1.0, -3.0])]
    [0.368, 1.0, 0.05, 0.05]
    """
    raw = np.clip(np.asarray(output, dtype=np.float64).reshape(-1), -1.0, 1.0)
    return to_action(np.exp(ACTION_SCALE * raw))


@dataclass(frozen=True)
class SavedTeacher:
    """A loaded teacher: the SB3 model and what ``teacher.json`` says about it."""

    model: Any
    skills: list[str]
    meta: dict[str, Any]


def is_saved_teacher(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory written by :func:`save_teacher`."""
    return (Path(path) / META_FILE).is_file()


def save_teacher(
    directory: str | os.PathLike[str], model: Any, skills: list[str], meta: Mapping[str, Any]
) -> Path:
    """Write ``model`` (an SB3 PPO) and its metadata to ``directory``; returns it.

    ``teacher.json`` is written last, through a temporary file, so a crash
    mid-save leaves no directory that :func:`is_saved_teacher` accepts.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / POLICY_FILE)
    record = {"format": FORMAT, "skills": list(skills), **dict(meta)}
    tmp = out / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / META_FILE)
    return out


def load_teacher(directory: str | os.PathLike[str]) -> SavedTeacher:
    """Read what :func:`save_teacher` wrote; a ConfigError names what is wrong."""
    out = Path(directory)
    meta_path = out / META_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{out} is not a saved teacher (no {META_FILE}; see train-teacher)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{meta_path}: not readable JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ConfigError(f"{meta_path}: format {found!r} is not {FORMAT!r}")
    skills = meta.get("skills")
    if not isinstance(skills, list) or not all(isinstance(s, str) for s in skills) or not skills:
        raise ConfigError(f"{meta_path}: 'skills' must be a non-empty list of skill names")
    from stable_baselines3 import PPO  # the rl extra

    try:
        model = PPO.load(out / POLICY_FILE, device="cpu")
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{out / POLICY_FILE}: cannot load the policy ({err})") from None
    expected = (feature_size(len(skills)),)
    if tuple(model.observation_space.shape or ()) != expected:
        raise ConfigError(
            f"{out}: the policy reads {model.observation_space.shape} features, "
            f"{len(skills)} skills need {expected}"
        )
    return SavedTeacher(model=model, skills=list(skills), meta=meta)


class PPOOptions(Options):
    """Options of :class:`PPOTeacher` (``teacher=<saved dir>`` sets ``path``)."""

    path: str = Field(description="directory written by `teachgym train-teacher`")


class PPOTeacher(SkillListTeacher):
    """A PPO policy trained on the population vector env (``teachgym train-teacher``).

    Acts deterministically (the mean of the policy's Gaussian), so a seed and
    a saved teacher fully determine the actions and resume needs no state
    beyond the base class's. The env must have the skills, in the order, that
    the teacher was trained on; the budget may differ (:func:`features` reads
    fractions of it).
    """

    @takes(PPOOptions)
    def __init__(self, env: Any, seed: int = 0, *, path: str) -> None:
        super().__init__(env, seed)
        saved = load_teacher(path)
        if saved.skills != self.skills:
            raise ConfigError(
                f"teacher {path} was trained on skills {saved.skills}, this env has {self.skills}"
            )
        self.path = str(path)
        self.model = saved.model
        self.meta = saved.meta
        self.budget = float(getattr(env, "unwrapped", env).config.budget)

    def act(self, observation: Any, info: Mapping[str, Any]) -> np.ndarray:
        self._accuracy(observation)  # checks the observation's shape against the skills
        output, _ = self.model.predict(features(observation, self.budget), deterministic=True)
        return policy_weights(output)
