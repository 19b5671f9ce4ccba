"""A learning-progress teacher after Matiisen et al., Teacher-Student Curriculum Learning.

TSCL's idea: train on what the student is learning fastest *right now*. A
skill the student has mastered or cannot yet learn gives little progress per
example; a skill on the steep part of its learning curve gives a lot. The
teacher needs no model of difficulty, only each skill's recent accuracies.
This is TSCL's *windowed* variant (least-squares slope over the last few
evaluations) with Boltzmann allocation, turned from "pick one task" into "split
this step's examples", because a SkillList step trains on a mix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field

from teachgym.agents.policies.base import SkillListTeacher, to_action
from teachgym.options import Options, takes

#: The largest |slope| (accuracy per step) a skill can show; untried skills get it (optimism).
_MAX_PROGRESS = 1.0


def _slope(points: list[float]) -> float:
    """Least-squares slope of ``points`` against 0, 1, 2, ...; a regression, not the
    last difference, so one noisy evaluation does not swing the allocation."""
    y = np.asarray(points, dtype=np.float64)
    x = np.arange(y.size, dtype=np.float64)
    x -= x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def _with_minimum(shares: np.ndarray, mask: np.ndarray, minimum: float) -> np.ndarray:
    """Raise the skills in ``mask`` to at least ``minimum`` and take the mass from the rest
    in proportion, so the guarantee is exact rather than diluted by renormalising."""
    count = int(mask.sum())
    if minimum <= 0.0 or count == 0:
        return shares
    floor = min(minimum, 1.0 / count)
    p = shares.astype(np.float64).copy()
    fixed = np.zeros(p.shape, dtype=bool)
    for _ in range(p.size):
        low = mask & ~fixed & (p < floor)
        if not low.any():
            break
        fixed |= low
        p[fixed] = floor
        rest = ~fixed
        rest_sum = p[rest].sum()
        if rest_sum > 0.0:
            p[rest] *= (1.0 - floor * fixed.sum()) / rest_sum
    return p / p.sum()


class ProgressOptions(Options):
    """Options of :class:`ProgressTeacher`."""

    memory: int = Field(default=2, ge=2, description="measured accuracies kept per skill")


class ProgressTeacher(SkillListTeacher):
    """Base for teachers that allocate by each skill's recent validation accuracies.

    It keeps the last ``memory`` measured accuracies of every skill and sees
    each evaluation once in the runner's ``act``/``step``/``update`` loop:
    ``update`` records the new observation and ``act`` only records one it
    has not seen (the first observation of an episode, or a runner that never
    calls ``update``). Before an observation is recorded, :meth:`_learn` gets
    it with the previous ones still in :attr:`history`, which is where a
    bandit updates its estimates. Everything is cleared at episode end, since
    ``reset`` restores the student's base weights. Subclasses write
    :meth:`shares`, called once per ``act``, and extend the state through
    ``super()``.
    """

    @takes(ProgressOptions)
    def __init__(self, env: Any, seed: int = 0, *, memory: int) -> None:
        super().__init__(env, seed)
        self.memory = memory
        self.history: list[list[float]] = [[] for _ in self.skills]
        # True when update() has already recorded the observation that act() will see,
        # so the usual act/step/update loop does not count one evaluation twice.
        self._seen_latest = False

    def _learn(self, accuracy: np.ndarray) -> None:
        """A new evaluation, before it joins :attr:`history` (a bandit's update)."""
        return None

    def _observe(self, accuracy: np.ndarray) -> None:
        self._learn(accuracy)
        for points, value in zip(self.history, accuracy, strict=True):
            if np.isfinite(value):  # NaN = not measured this step: no point, no fake slope
                points.append(float(value))
                del points[: -self.memory]

    def latest_accuracy(self) -> np.ndarray:
        """The last measured accuracy per skill; NaN where none was measured."""
        return np.array([points[-1] if points else np.nan for points in self.history])

    def changes(self, accuracy: np.ndarray) -> np.ndarray:
        """``accuracy`` minus the last measured accuracy, per skill; NaN where either is missing."""
        return np.asarray(accuracy, dtype=np.float64) - self.latest_accuracy()

    def shares(self) -> np.ndarray:
        """Fractions of the next step's examples per skill (sum 1)."""
        raise NotImplementedError

    def act(self, observation: Any, info: Mapping[str, Any]) -> np.ndarray:
        accuracy = self._accuracy(observation)
        if not self._seen_latest:
            # First observation of an episode (or a runner that never calls update).
            self._observe(accuracy)
        self._seen_latest = False
        return to_action(self.shares())

    def _end_episode(self) -> None:
        """Forget the episode: the next one starts from the base student."""
        self.history = [[] for _ in self.skills]
        self._seen_latest = False

    def update(
        self,
        observation: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: Mapping[str, Any],
    ) -> None:
        if terminated or truncated:
            self._end_episode()
            return
        self._observe(self._accuracy(observation))
        self._seen_latest = True

    def _extra_state(self) -> dict[str, Any]:
        return {
            "history": [list(points) for points in self.history],
            "seen_latest": self._seen_latest,
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        history = state.get("history")
        if not isinstance(history, list) or len(history) != self.num_skills:
            raise ValueError(
                f"state['extra']['history'] must hold one list per skill ({self.num_skills}), "
                f"got {history!r}"
            )
        self.history = [[float(v) for v in points][-self.memory :] for points in history]
        self._seen_latest = bool(state.get("seen_latest", False))


class LearningProgressOptions(Options):
    """Options of :class:`LearningProgressTeacher` (``learning_progress``)."""

    window: int = Field(default=4, ge=2, description="validation accuracies the slope is fit to")
    temperature: float = Field(
        default=0.25, gt=0.0, description="softmax temperature, in accuracy per step"
    )
    epsilon: float = Field(default=0.1, ge=0.0, le=1.0, description="even share mixed in")
    weakness: float = Field(
        default=1.0, ge=0.0, description="weight of the pull towards low accuracy"
    )
    mastery: float = Field(
        default=0.95, ge=0.0, le=1.0, description="accuracy from which a skill is mastered"
    )
    replay: float = Field(
        default=0.05, ge=0.0, le=1.0, description="least share of a step for a mastered skill"
    )


class LearningProgressTeacher(ProgressTeacher):
    """Most data to the skills whose validation accuracy is changing fastest.

    Each step, for every skill, the teacher fits a line to its last ``window``
    validation accuracies and scores the skill by

        score_k = |slope_k| + weakness * (1 - acc_k)

    then allocates ``softmax(score / temperature)``, mixed with an even share
    ``epsilon``, and lifts every mastered skill (``acc_k >= mastery``) to at
    least ``replay`` of the step.

    Why each part:

    - ``|slope|``, not slope: a skill whose accuracy *falls* is being forgotten
      and needs data as urgently as one that is rising (as in TSCL).
    - ``weakness``: before a phase change (a skill sitting at 0 until the
      student "gets" it) every slope is ~0, so progress alone cannot tell a
      hopeless skill from an unstarted one, and a plateaued curriculum would
      drift to uniform and starve the weak skills. A pull towards low
      accuracy keeps feeding them. It is in the same unit as the slope: a
      skill at 0 accuracy scores like one improving by ``weakness`` per step.
      A validation slope over a few evaluations is noisy, and a small
      ``weakness`` with a low temperature lets the teacher chase that noise
      (one skill's early jump, from learning the answer format, takes most
      of the data); the default 1.0 keeps the pull towards weak skills
      strong enough to ride it out. Progress still decides between skills
      of similar accuracy.
    - optimism: a skill with fewer than 2 measured accuracies has no slope
      yet and is scored as the largest possible progress (1.0 per step), so
      every skill is tried before the teacher commits.
    - ``epsilon``: the slope comes from a noisy validation set; without
      exploration a skill that once looked flat might never be fed again, and
      its change would never be observed.
    - ``replay``: a mastered skill has no progress and no weakness, so it
      would get almost nothing and be forgotten (the student keeps training
      on other skills). A guaranteed small share keeps it rehearsed; a
      forgotten skill is then caught by ``|slope|`` as well.

    ``temperature`` is in accuracy-per-step units: with the default 0.25, a
    skill improving 0.25 per step faster than another (or 0.25 less
    accurate) gets e ≈ 2.7 times more data. History is cleared at episode
    end, because ``reset`` restores the student's base weights and the drop
    would read as forgetting.

    >>> from types import SimpleNamespace
    >>> env = SimpleNamespace(unwrapped=SimpleNamespace(skills=["rising", "mastered"]))
    >>> teacher = LearningProgressTeacher(env)
    >>> for acc in ([0.1, 0.99], [0.3, 0.99], [0.5, 0.99]):
    ...     teacher.update({"accuracy": acc}, 0.0, False, False, {})
    >>> action = teacher.act({"accuracy": [0.5, 0.99]}, {})
    >>> bool(action[0] > action[1] > 0)
    True
    """

    @takes(LearningProgressOptions)
    def __init__(
        self,
        env: Any,
        seed: int = 0,
        *,
        window: int,
        temperature: float,
        epsilon: float,
        weakness: float,
        mastery: float,
        replay: float,
    ) -> None:
        self.window = window
        super().__init__(env, seed, memory=self.window)
        self.temperature = temperature
        self.epsilon = epsilon
        self.weakness = weakness
        self.mastery = mastery
        self.replay = replay

    def progress(self) -> np.ndarray:
        """|slope| per skill over the window; NaN where a skill has fewer than 2 points."""
        return np.array(
            [abs(_slope(points)) if len(points) >= 2 else np.nan for points in self.history]
        )

    def shares(self) -> np.ndarray:
        """Fractions of the next step's examples per skill (sum 1), from the history."""
        k = self.num_skills
        progress = np.nan_to_num(self.progress(), nan=_MAX_PROGRESS)
        acc = self.latest_accuracy()
        score = progress + self.weakness * (1.0 - np.nan_to_num(acc, nan=0.0))
        logits = score / self.temperature
        boltzmann = np.exp(logits - logits.max())
        boltzmann /= boltzmann.sum()
        mixed = (1.0 - self.epsilon) * boltzmann + self.epsilon / k
        mastered = np.nan_to_num(acc, nan=-1.0) >= self.mastery
        return _with_minimum(mixed, mastered, self.replay)
