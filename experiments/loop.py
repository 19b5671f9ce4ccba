"""The one episode loop: ``run_episode(env, teacher, callbacks)``.

Everything that runs an episode (``teachgym run``, ``teachgym compare``, a Ray
Tune trial, the tests) goes through this function, and it uses nothing but the
gymnasium API and the teacher protocol, so any env that behaves like a
gymnasium env and any object with ``act``/``update`` can be driven by it. What
a run *records* (the run directory, checkpoints, a progress bar, wandb) is a
:class:`Callback`, so the loop stays the same whether an episode writes to a
laptop's disk or reports to Ray Tune.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Transition:
    """One ``act -> step -> update`` round, as the callbacks see it."""

    action: Any
    observation: Any
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    seconds: float  # wall time of the round (act + step + update)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass(frozen=True)
class EpisodeState:
    """Where a resumed episode stands: the observation and info the teacher saw last."""

    observation: Any
    info: dict[str, Any]
    done: bool = False


@dataclass(frozen=True)
class EpisodeResult:
    """What :func:`run_episode` returns: whether the episode ended, and its last state."""

    finished: bool
    steps_taken: int
    observation: Any
    info: dict[str, Any]


@runtime_checkable
class Episode(Protocol):
    """What a callback may use of the episode beyond the gymnasium API: the handle
    :attr:`Callback.episode` (a teachgym env offers it; any other env gives ``None``).

    ``skills`` orders every per-skill vector; ``last_examples`` and
    ``last_predictions`` are what the latest step trained on and what the
    student answered on the validation split; ``observe`` is the teacher's
    current observation; ``state_dict``/``load_state_dict`` are the env's
    resumable state and ``save_student``/``load_student`` the student's
    weights, which together make a checkpoint.
    """

    @property
    def skills(self) -> list[str]: ...

    @property
    def last_examples(self) -> Sequence[Any]: ...

    @property
    def last_predictions(self) -> Sequence[Any]: ...

    def observe(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save_student(self, path: Path) -> None: ...

    def load_student(self, path: Path) -> None: ...


def episode_of(env: Any) -> Episode | None:
    """The :class:`Episode` handle of ``env`` (wrapped or not), or ``None``."""
    core = getattr(env, "unwrapped", env)  # gymnasium's documented way to the base env
    return core if isinstance(core, Episode) else None


class Callback:
    """Hooks called by :func:`run_episode`; override the ones you need.

    Before the first hook, :func:`run_episode` sets :attr:`episode` (the
    :class:`Episode` handle of the env, ``None`` for an env that is not a
    teachgym env), in the way Stable-Baselines3 hands its callbacks the model:
    a documented handle, so a callback never reaches into ``env.unwrapped``.

    The order within one episode is ``on_start`` (fresh episode, after
    ``reset``) or ``on_resume`` (continuing from saved state), then
    ``on_step`` after every round, then exactly one of ``on_end`` (the episode
    terminated or was truncated), ``on_pause`` (``max_new_steps`` reached; the
    episode can be resumed) or ``on_error`` (an exception escaped; it is
    re-raised after the callbacks ran).
    """

    #: The env's :class:`Episode` handle, set by :func:`run_episode`.
    episode: Episode | None = None

    def on_start(self, env: Any, teacher: Any, observation: Any, info: dict[str, Any]) -> None:
        """A fresh episode: ``observation``/``info`` come from ``env.reset``."""

    def on_resume(self, env: Any, teacher: Any, state: EpisodeState) -> None:
        """An episode continued from saved state."""

    def on_step(self, env: Any, teacher: Any, transition: Transition) -> None:
        """After ``teacher.update`` of one round."""

    def on_end(self, env: Any, teacher: Any) -> None:
        """The episode is over (terminated or truncated)."""

    def on_pause(self, env: Any, teacher: Any) -> None:
        """Stopped after ``max_new_steps`` rounds; resumable."""

    def on_error(self, env: Any, teacher: Any, error: BaseException) -> None:
        """An exception (or Ctrl-C) is about to leave the loop."""


def run_episode(
    env: Any,
    teacher: Any,
    callbacks: Sequence[Callback] = (),
    *,
    seed: int | None = None,
    resume: EpisodeState | None = None,
    max_new_steps: int | None = None,
) -> EpisodeResult:
    """Run (or continue) one episode of ``teacher`` on ``env``.

    Args:
        env: a gymnasium env (wrapped or not).
        teacher: an object with ``act(obs, info)`` and
            ``update(obs, reward, terminated, truncated, info)``.
        callbacks: see :class:`Callback`; called in order.
        seed: passed to ``env.reset`` for a fresh episode.
        resume: continue from this state instead of calling ``reset`` (the
            env and teacher must already hold the matching state).
        max_new_steps: stop after this many rounds, resumable (a time-boxed slice).

    Example (with a stand-in env, to show the protocol):

    >>> class Countdown:
    ...     def reset(self, seed=None): return 2, {}
    ...     def step(self, action):
    ...         return action - 1, 1.0, action - 1 == 0, False, {}
    >>> class Echo:
    ...     def act(self, obs, info): return obs
    ...     def update(self, *args): pass
    >>> result = run_episode(Countdown(), Echo())
    >>> result.finished, result.steps_taken, result.observation
    (True, 2, 0)
    """
    if max_new_steps is not None and max_new_steps < 0:
        raise ValueError(f"max_new_steps must be >= 0, got {max_new_steps}")
    for cb in callbacks:
        cb.episode = episode_of(env)
    try:
        observation, info, done = _begin(env, teacher, callbacks, seed, resume)
        taken = 0
        while not done:
            if max_new_steps is not None and taken >= max_new_steps:
                for cb in callbacks:
                    cb.on_pause(env, teacher)
                return EpisodeResult(False, taken, observation, info)
            transition = play_round(env, teacher, observation, info)
            observation, info, done = transition.observation, transition.info, transition.done
            taken += 1
            for cb in callbacks:
                cb.on_step(env, teacher, transition)
        for cb in callbacks:
            cb.on_end(env, teacher)
        return EpisodeResult(True, taken, observation, info)
    except BaseException as err:
        for cb in callbacks:
            # A failing cleanup must not hide the error that ended the episode.
            with contextlib.suppress(Exception):
                cb.on_error(env, teacher, err)
        raise


def _begin(
    env: Any,
    teacher: Any,
    callbacks: Sequence[Callback],
    seed: int | None,
    resume: EpisodeState | None,
) -> tuple[Any, dict[str, Any], bool]:
    """``reset`` and ``on_start`` for a fresh episode, ``on_resume`` for a resumed one."""
    if resume is None:
        observation, info = env.reset(seed=seed)
        for cb in callbacks:
            cb.on_start(env, teacher, observation, info)
        return observation, info, False
    for cb in callbacks:
        cb.on_resume(env, teacher, resume)
    return resume.observation, resume.info, resume.done


def play_round(env: Any, teacher: Any, observation: Any, info: dict[str, Any]) -> Transition:
    """One ``act -> step -> update`` round from ``observation``/``info``."""
    t0 = time.perf_counter()
    action = teacher.act(observation, info)
    observation, reward, terminated, truncated, info = env.step(action)
    teacher.update(observation, float(reward), terminated, truncated, info)
    return Transition(
        action=action,
        observation=observation,
        reward=float(reward),
        terminated=bool(terminated),
        truncated=bool(truncated),
        info=info,
        seconds=time.perf_counter() - t0,
    )
