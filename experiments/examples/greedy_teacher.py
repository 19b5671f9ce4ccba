"""An example teacher, top to bottom, with no framework: run it with

    teachgym run teacher=teachgym.experiments.examples.greedy_teacher:GreedyTeacher

(or put a copy in your own module and name that: ``teacher=my_teachers:GreedyTeacher``).

It gives most of each step's data to the skill whose validation accuracy rose
the most last step (keep pushing what is working), a fixed share to the
weakest skill (so nothing is left behind), and spreads the rest evenly (so
mastered skills are not forgotten).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class GreedyTeacher:
    def __init__(self, env: Any, seed: int = 0, push: float = 0.5, weakest: float = 0.2) -> None:
        self.skills = list(env.unwrapped.skills)  # the order of every per-skill vector
        self.push, self.weakest = push, weakest
        self.last: np.ndarray | None = None  # accuracies seen at the previous step

    def act(self, observation: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        acc = observation["accuracy"]
        gain = acc - self.last if self.last is not None else np.zeros_like(acc)
        self.last = acc.copy()
        k = len(self.skills)
        weights = np.full(k, (1.0 - self.push - self.weakest) / k)
        weights[int(np.argmax(gain))] += self.push
        weights[int(np.argmin(acc))] += self.weakest
        return (weights / weights.max()).astype(np.float32)  # SkillList: Box(0, 1, (K,))

    def update(
        self,
        observation: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict[str, Any],
    ) -> None:
        if terminated or truncated:
            self.last = None  # the next episode starts from an untrained student

    def state_dict(self) -> dict[str, Any]:
        return {"last": None if self.last is None else self.last.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last = None if state["last"] is None else np.asarray(state["last"], np.float32)
