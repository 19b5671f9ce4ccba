"""The teacher-policy protocol and a small base class for SkillList teachers.

A teacher is the one component a curriculum researcher writes; everything else
(generation, filtering, training, evaluation) belongs to the environment. The
protocol is therefore as small as a gymnasium agent loop allows:

- ``act`` is all a researcher *must* write: observation in, plan out.
- ``update`` is the hook for teachers that learn from what happened (a bandit,
  a learning-progress tracker, an RL policy); fixed heuristics ignore it.
- ``state_dict`` / ``load_state_dict`` exist so that ``teachgym run --resume``
  continues after a crash with exactly the actions an uninterrupted run would
  have taken. A teacher with hidden state (an RNG, a history) that is not
  saved would silently change the experiment on resume. The state is
  JSON-safe so it can sit in the checkpoint next to the env's state and be
  read by a person.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TeacherPolicy(Protocol):
    """What the episode runner calls, once per env step.

    The runner's loop is ``action = act(obs, info)``, ``obs, reward, terminated,
    truncated, info = env.step(action)``, ``update(obs, reward, terminated,
    truncated, info)``. Teachers are built as ``cls(env=env, seed=seed,
    **teacher_kwargs)`` (see :mod:`teachgym.registry`), so a user's class only
    has to accept those keywords to run from a config.
    """

    def act(self, observation: Any, info: Mapping[str, Any]) -> Any:
        """The plan for the next step (for SkillList: a float32 weight per skill)."""
        ...

    def update(
        self,
        observation: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: Mapping[str, Any],
    ) -> None:
        """Learn from the outcome of the last action."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to reproduce future actions; JSON-safe."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


@runtime_checkable
class ReportsStats(Protocol):
    """A teacher that counts what its latest ``act`` cost (an LLM teacher's requests,
    tokens, fallbacks): ``last_stats``, recorded as ``teacher`` in ``steps.jsonl``."""

    @property
    def last_stats(self) -> Mapping[str, Any]: ...


def teacher_stats(teacher: Any) -> Mapping[str, Any] | None:
    """``teacher.last_stats`` for a :class:`ReportsStats` teacher, else ``None``."""
    return teacher.last_stats if isinstance(teacher, ReportsStats) else None


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
) -> float:
    """Validate one hyper-parameter; the error names it so a config typo is easy to find."""
    ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (number <= low if low_open else number < low):
        bound = ">" if low_open else ">="
        raise ValueError(f"{name} must be {bound} {low}, got {value!r}")
    if high is not None and number > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return number


def to_action(weights: np.ndarray) -> np.ndarray:
    """Shares -> a SkillList action: float32 in [0, 1], largest weight 1.

    Dividing by the max (not the sum) keeps the action inside the Box(0, 1)
    action space for any K while preserving the ratios, which are all the env
    reads. An all-zero or non-finite vector becomes uniform rather than an
    error, because the env treats all-zero as "spread evenly" anyway.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = np.where(np.isfinite(w), np.clip(w, 0.0, None), 0.0)
    top = w.max(initial=0.0)
    if top <= 0.0:
        return np.ones(w.shape, dtype=np.float32)
    return np.clip(w / top, 0.0, 1.0).astype(np.float32)


#: How a refused state's identity key reads in the error.
_IDENTITY_NAMES = {"skills": "skill list"}


def examples_per_step(env: Any) -> int | None:
    """The env's step size from its config, or None for a stand-in env without one."""
    config = getattr(getattr(env, "unwrapped", env), "config", None)
    value = getattr(config, "examples_per_step", None)
    return int(value) if value is not None else None


class SeededTeacher:
    """Base for built-in teachers: a seed, the teacher's one RNG, and checked state.

    It owns the teacher's only randomness (one seeded numpy Generator, so a
    seed fully determines the actions) and saves and restores that RNG.
    Subclasses add their own state through :meth:`_extra_state` /
    :meth:`_load_extra_state` instead of overriding :meth:`state_dict`, so the
    RNG and the identity checks cannot be forgotten: a state saved by another
    teacher class, or for another env (:meth:`_identity`), is refused rather
    than half-loaded.
    """

    def __init__(self, env: Any, seed: int = 0) -> None:
        check_number("seed", seed, low=0, integer=True)
        self.env = env
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.step_size = examples_per_step(env)

    def cap(self, budget_left: int | None) -> int:
        """Examples the next step may use: the step size, or the budget left if smaller."""
        sizes = [x for x in (self.step_size, budget_left) if x is not None]
        return max(0, min(sizes)) if sizes else 0

    def update(
        self,
        observation: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: Mapping[str, Any],
    ) -> None:
        """Fixed heuristics do not learn; they read everything they need in ``act``."""
        return None

    def _identity(self) -> dict[str, Any]:
        """What a saved state must match besides the class (SkillList: the skill order)."""
        return {}

    def _extra_state(self) -> dict[str, Any]:
        """Subclass state to checkpoint (JSON-safe)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` returned."""
        return None

    def state_dict(self) -> dict[str, Any]:
        # PCG64's state is plain dicts and (big) Python ints, which JSON keeps exactly.
        return {
            "teacher": type(self).__name__,
            **self._identity(),
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("teacher") != type(self).__name__:
            raise ValueError(
                f"state was saved by teacher {state.get('teacher')!r}, "
                f"cannot load it into {type(self).__name__}"
            )
        for key, value in self._identity().items():
            if state.get(key) != value:
                what = _IDENTITY_NAMES.get(key, key)
                raise ValueError(
                    f"state was saved for a different {what} ({state.get(key)!r} vs {value!r})"
                )
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._load_extra_state(copy.deepcopy(state.get("extra", {})))


class SkillListTeacher(SeededTeacher):
    """Base for teachers that act on ``teachgym/SkillList-v0``.

    It fixes the skill order once (``env.unwrapped.skills``, the order of the
    action and observation vectors), owns the teacher's only randomness (one
    seeded numpy Generator, so a seed fully determines the actions), and saves
    and restores that RNG. Subclasses add their own state through
    :meth:`_extra_state` / :meth:`_load_extra_state` instead of overriding
    :meth:`state_dict`, so the RNG and skill-order checks cannot be forgotten.
    """

    def __init__(self, env: Any, seed: int = 0) -> None:
        skills = getattr(getattr(env, "unwrapped", env), "skills", None)
        if skills is None:
            raise ValueError(
                f"{type(self).__name__} needs an env with a skill list "
                f"(env.unwrapped.skills); got {type(env).__name__}"
            )
        self.skills: list[str] = [str(s) for s in skills]
        if not self.skills:
            raise ValueError(f"{type(self).__name__} needs at least one skill; env has none")
        super().__init__(env, seed)

    @property
    def num_skills(self) -> int:
        return len(self.skills)

    def _accuracy(self, observation: Any) -> np.ndarray:
        """The per-skill accuracy vector, checked against the skill list.

        A wrong shape means the teacher was built for another env (or another
        skill tree); failing loudly beats allocating to the wrong skills.
        NaN is kept: it means "not measured" and subclasses decide what to do.
        """
        try:
            acc = observation["accuracy"]
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(
                f"{type(self).__name__} expects a SkillList observation with key 'accuracy'; "
                f"got {type(observation).__name__}"
            ) from err
        acc = np.asarray(acc, dtype=np.float64).reshape(-1)
        if acc.shape != (self.num_skills,):
            raise ValueError(
                f"observation['accuracy'] has {acc.size} values but the teacher knows "
                f"{self.num_skills} skills"
            )
        return acc

    def act(self, observation: Any, info: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _identity(self) -> dict[str, Any]:
        return {"skills": list(self.skills)}
