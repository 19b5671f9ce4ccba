"""Reference teachers that any learned curriculum has to beat.

They are deliberately simple so that a comparison measures the curriculum
idea, not tuning: ``uniform`` is the "no curriculum" control, ``random`` shows
how much any fixed mix varies, and ``weakest`` is the obvious heuristic a
human teacher would try first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field

from teachgym.agents.policies.base import SkillListTeacher, to_action
from teachgym.options import Options, takes


class UniformTeacher(SkillListTeacher):
    """The same share for every skill, every step: the no-curriculum control.

    >>> from types import SimpleNamespace
    >>> env = SimpleNamespace(unwrapped=SimpleNamespace(skills=["add", "sub", "mul"]))
    >>> UniformTeacher(env).act({"accuracy": [0.1, 0.5, 0.9]}, {}).tolist()
    [1.0, 1.0, 1.0]
    """

    def act(self, observation: Any, info: Mapping[str, Any]) -> np.ndarray:
        # Reads nothing, so it also runs on wrapped or flattened observations.
        return np.ones(self.num_skills, dtype=np.float32)


class RandomOptions(Options):
    """Options of the ``random`` teachers (a Dirichlet draw per step)."""

    concentration: float = Field(
        default=1.0, gt=0.0, description="Dirichlet concentration; larger: nearer uniform"
    )


class RandomTeacher(SkillListTeacher):
    """A fresh random mix each step, drawn from Dirichlet(``concentration``).

    Dirichlet(1) is uniform over all possible mixes, so this teacher is an
    unbiased sample of "some curriculum"; the spread of its results over seeds
    tells how much a teacher's choices can matter at all in a given env.
    Larger ``concentration`` pulls mixes towards uniform.
    """

    @takes(RandomOptions)
    def __init__(self, env: Any, seed: int = 0, *, concentration: float) -> None:
        super().__init__(env, seed)
        self.concentration = concentration

    def act(self, observation: Any, info: Mapping[str, Any]) -> np.ndarray:
        shares = self.rng.dirichlet(np.full(self.num_skills, self.concentration))
        return to_action(shares)


def weakness_shares(acc: Any, power: float, eps: float, floor: float) -> np.ndarray:
    """Shares (sum 1) that grow with weakness: ``(1 - acc + eps) ** power``, mixed with an
    even ``floor`` so no skill is starved. An unmeasured skill (NaN) counts as unknown,
    i.e. as weak as possible."""
    acc = np.clip(np.nan_to_num(np.asarray(acc, dtype=np.float64), nan=0.0), 0.0, 1.0)
    raw = (1.0 - acc + eps) ** power
    total = raw.sum()
    greedy = raw / total if total > 0 else np.full(len(acc), 1.0 / len(acc))
    return floor / len(acc) + (1.0 - floor) * greedy


class WeakestOptions(Options):
    """Options of :class:`WeakestTeacher` (``weakest``)."""

    power: float = Field(
        default=2.0, ge=0.0, description="greed: 0 uniform, 1 proportional to the error rate"
    )
    eps: float = Field(default=0.01, ge=0.0, description="added to every error rate")
    floor: float = Field(
        default=0.1, ge=0.0, le=1.0, description="fraction of a step spread over all skills"
    )


class WeakestTeacher(SkillListTeacher):
    """Most data to the skills the student is worst at.

    The share of skill k is proportional to ``(1 - acc_k + eps) ** power``,
    mixed with an even ``floor``: a fraction ``floor`` of every step's examples
    is spread over all skills. The floor is there because a student that gets
    no data on a skill it has mastered forgets it, so a purely greedy teacher
    trades one skill for another. ``floor`` is a total, not a per-skill share, so the default means
    the same thing for 3 skills or 300.

    ``power`` sets how greedy the teacher is: 0 is uniform, 1 is proportional
    to the error rate, large values give almost everything to the single
    weakest skill. The default 2 still splits data between two similarly weak
    skills instead of starving the second one. ``eps`` keeps the weights
    defined when every skill is at 1.0 (then the mix is uniform).

    >>> from types import SimpleNamespace
    >>> env = SimpleNamespace(unwrapped=SimpleNamespace(skills=["add", "sub", "mul"]))
    >>> action = WeakestTeacher(env).act({"accuracy": [1.0, 0.9, 0.2]}, {})
    >>> int(action.argmax()), bool(action[0] > 0)
    (2, True)
    """

    @takes(WeakestOptions)
    def __init__(self, env: Any, seed: int = 0, *, power: float, eps: float, floor: float) -> None:
        super().__init__(env, seed)
        self.power, self.eps, self.floor = power, eps, floor

    def shares(self, observation: Any) -> np.ndarray:
        """Fractions of the step's examples per skill (sum 1); exposed for inspection."""
        return weakness_shares(self._accuracy(observation), self.power, self.eps, self.floor)

    def act(self, observation: Any, info: Mapping[str, Any]) -> np.ndarray:
        return to_action(self.shares(observation))
