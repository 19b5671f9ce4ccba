"""Bandit teachers from the curriculum literature, the baselines a learned teacher must beat.

Each was published as a bandit that picks *one* task per round (a batch or
an episode of that task), observes how much the student improved on it, and
updates its estimates. A SkillList step instead trains on a mix and then
evaluates every skill, so every teacher here is adapted the same way:

- the distribution the paper samples one task from becomes the step's
  *shares*: the examples are split over the skills in those proportions,
  which is what sampling the task of every example independently would give
  (a step has thousands of examples);
- the reward of a skill is its own validation progress between two
  evaluations, observed for every skill every step (the paper observes only
  the task it picked). Where a paper corrects for that partial view
  (EXP3.S's importance weights), the correction is not needed and is left out.

Progress is *absolute* (``|Δ accuracy|``) everywhere, as in the papers: a
skill being forgotten needs data as much as one being learned. Each teacher
clears its estimates at episode end, because ``reset`` restores the
student's base weights, and saves all of its state (estimates, history and
RNG) for ``teachgym run --resume``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from teachgym.agents.policies.learning_progress import LearningProgressTeacher, ProgressTeacher
from teachgym.options import Options, takes


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _abs_changes(history: list[list[float]]) -> list[np.ndarray]:
    """Per skill, ``|Δ accuracy|`` between consecutive evaluations in ``history``."""
    return [np.abs(np.diff(np.asarray(points, dtype=np.float64))) for points in history]


_EPSILON = "even share mixed in"


class TSCLWindowOptions(Options):
    """Options of :class:`TSCLWindowTeacher` (``tscl_window``)."""

    window: int = Field(default=4, ge=2, description="scores the slope is fit to")
    temperature: float = Field(default=0.05, gt=0.0, description="Boltzmann temperature")
    epsilon: float = Field(default=0.1, ge=0.0, le=1.0, description=_EPSILON)


class TSCLWindowTeacher(LearningProgressTeacher):
    """TSCL's *Window* algorithm with Boltzmann selection.

    Matiisen, Oliver, Cohen and Schulman (2017), "Teacher-Student Curriculum
    Learning" (IEEE TNNLS 2019). The rule: a task's learning progress is the
    slope of a linear regression over its last ``window`` scores; the teacher
    samples the task from a Boltzmann distribution over ``|slope|`` (here
    mixed with an even ``epsilon``; the paper also has an ε-greedy variant).
    Adapted: the Boltzmann distribution is the step's shares. This is
    :class:`LearningProgressTeacher` with its two additions turned off (no
    pull towards weak skills, no replay share for mastered ones), so it is
    the published rule alone; a skill with fewer than two measurements is
    scored as the largest possible progress, so every skill is tried.
    """

    @takes(TSCLWindowOptions)
    def __init__(
        self, env: Any, seed: int = 0, *, window: int, temperature: float, epsilon: float
    ) -> None:
        super().__init__(
            env,
            seed,
            window=window,
            temperature=temperature,
            epsilon=epsilon,
            weakness=0.0,
            replay=0.0,
        )


class TSCLSamplingOptions(Options):
    """Options of :class:`TSCLSamplingTeacher` (``tscl_sampling``)."""

    window: int = Field(default=4, ge=1, description="rewards kept per skill")
    draws: int = Field(default=100, ge=1, description="sampling rounds per step")
    epsilon: float = Field(default=0.05, ge=0.0, le=1.0, description=_EPSILON)


class TSCLSamplingTeacher(ProgressTeacher):
    """TSCL's *Sampling* algorithm, a Thompson-sampling-like rule.

    Matiisen, Oliver, Cohen and Schulman (2017), "Teacher-Student Curriculum
    Learning". The rule: each task keeps a buffer of its last ``window``
    rewards (score changes); each round, draw one reward from every buffer
    and train on the task whose draw has the largest absolute value; a task
    with an empty buffer is chosen first. Adapted: a step plays ``draws``
    such rounds (one seeded RNG) and its shares are the fraction of rounds
    each skill won, mixed with an even ``epsilon``. Ties (validation
    accuracies move in steps of 1/n) are broken at random.
    """

    @takes(TSCLSamplingOptions)
    def __init__(self, env: Any, seed: int = 0, *, window: int, draws: int, epsilon: float) -> None:
        self.window = window
        super().__init__(env, seed, memory=self.window + 1)
        self.draws, self.epsilon = draws, epsilon

    def shares(self) -> np.ndarray:
        k = self.num_skills
        buffers = _abs_changes(self.history)
        empty = np.array([b.size == 0 for b in buffers])
        if empty.any():
            wins = empty.astype(np.float64)
        else:
            draws = np.stack(
                [b[self.rng.integers(0, b.size, size=self.draws)] for b in buffers], axis=1
            )
            jitter = self.rng.random(draws.shape) * 1e-9  # below any accuracy step
            wins = np.bincount((draws + jitter).argmax(axis=1), minlength=k).astype(np.float64)
        return (1.0 - self.epsilon) * wins / wins.sum() + self.epsilon / k


class EXP3SOptions(Options):
    """Options of :class:`EXP3STeacher` (``exp3s``)."""

    eta: float = Field(default=0.5, gt=0.0, description="step size of the weight update")
    epsilon: float = Field(default=0.05, ge=0.0, le=1.0, description=_EPSILON)
    alpha: float = Field(default=0.02, ge=0.0, le=1.0, description="fixed-share mixing")
    memory: int = Field(default=200, ge=1, description="unscaled rewards kept for the quantiles")
    low_quantile: float = Field(default=0.2, ge=0.0, le=1.0, description="rescales to -1")
    high_quantile: float = Field(default=0.8, ge=0.0, le=1.0, description="rescales to +1")

    @model_validator(mode="after")
    def _ordered(self) -> EXP3SOptions:
        if self.low_quantile >= self.high_quantile:
            raise ValueError(
                f"low_quantile {self.low_quantile!r} is not below high_quantile "
                f"{self.high_quantile!r}"
            )
        return self


class EXP3STeacher(ProgressTeacher):
    """EXP3.S on absolute learning progress, after Graves et al.

    Graves, Bellemare, Menick, Munos and Kavukcuoglu (2017), "Automated
    Curriculum Learning for Neural Networks" (ICML). The rule: weights
    ``w`` over tasks, policy ``(1 - ε) softmax(w) + ε / K``; each reward is
    first rescaled to [-1, 1] by the 20th and 80th percentiles of the
    history of unscaled rewards (below the low quantile -1, above the high
    one +1, linear between), which makes the bandit indifferent to the
    reward's scale; then ``w_i <- log((1 - α) exp(w_i + η r_i) + α / (K - 1)
    Σ_{j≠i} exp(w_j + η r_j))``, the fixed-share mixing that lets weight
    flow back to a task whose progress returns (the ".S": switching).

    Adapted: the reward of every skill is its ``|Δ accuracy|`` between two
    evaluations (full information, so no importance weighting), the history
    holds the last ``memory`` unscaled rewards of all skills, and the policy
    is the step's shares. An episode has tens of rounds where the paper had
    thousands, so ``eta`` is far larger than the paper's.
    """

    @takes(EXP3SOptions)
    def __init__(
        self,
        env: Any,
        seed: int = 0,
        *,
        eta: float,
        epsilon: float,
        alpha: float,
        memory: int,
        low_quantile: float,
        high_quantile: float,
    ) -> None:
        super().__init__(env, seed, memory=2)
        self.eta, self.epsilon, self.alpha = eta, epsilon, alpha
        self.reward_memory = memory
        self.low_quantile, self.high_quantile = low_quantile, high_quantile
        self.weights = np.zeros(self.num_skills)
        self.rewards: list[float] = []  # recent unscaled rewards, all skills

    def rescale(self, raw: np.ndarray) -> np.ndarray:
        """Rewards -> [-1, 1] by the quantiles of the reward history (Graves et al., 2017)."""
        lo, hi = np.quantile(self.rewards, [self.low_quantile, self.high_quantile])
        if hi <= lo:  # no spread yet: above, below or at the one value
            return np.sign(raw - lo)
        return np.clip(2.0 * (raw - lo) / (hi - lo) - 1.0, -1.0, 1.0)

    def _learn(self, accuracy: np.ndarray) -> None:
        gains = np.abs(self.changes(accuracy))
        seen = np.isfinite(gains)
        if not seen.any():
            return
        self.rewards.extend(gains[seen].tolist())
        del self.rewards[: -self.reward_memory]
        reward = np.zeros(self.num_skills)
        reward[seen] = self.rescale(gains[seen])
        v = self.weights + self.eta * reward
        k = self.num_skills
        if k > 1:
            e = np.exp(v - v.max())
            v = v.max() + np.log((1.0 - self.alpha) * e + self.alpha / (k - 1) * (e.sum() - e))
        self.weights = v - v.max()  # softmax is shift-invariant; keeps the numbers small

    def shares(self) -> np.ndarray:
        return (1.0 - self.epsilon) * _softmax(self.weights) + self.epsilon / self.num_skills

    def _end_episode(self) -> None:
        super()._end_episode()
        self.weights = np.zeros(self.num_skills)
        self.rewards = []

    def _extra_state(self) -> dict[str, Any]:
        return super()._extra_state() | {
            "weights": self.weights.tolist(),
            "rewards": list(self.rewards),
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        weights = np.asarray(state.get("weights"), dtype=np.float64)
        if weights.shape != (self.num_skills,):
            raise ValueError(f"state['extra']['weights'] must hold {self.num_skills} numbers")
        self.weights = weights
        self.rewards = [float(r) for r in state.get("rewards", [])][-self.reward_memory :]


class ALPOptions(Options):
    """Options of :class:`ALPTeacher` (``alp``)."""

    epsilon: float = Field(default=0.2, ge=0.0, le=1.0, description="chance of a uniform pick")
    window: int = Field(default=3, ge=1, description="evaluations the progress is averaged over")


class ALPTeacher(ProgressTeacher):
    """ALP-GMM's sampling rule over discrete skills: absolute learning progress, ε random.

    Portelas, Colas, Hofmann and Oudeyer (2019), "Teacher algorithms for
    curriculum learning of Deep RL in continuously parameterized
    environments" (CoRL). The rule: a task's absolute learning progress
    (ALP) is ``|r_new - r_old|``, its reward now against the reward of the
    closest task sampled before; with probability ``ε`` a task is sampled
    uniformly, otherwise from the Gaussian mixture fitted to recent (task,
    ALP) pairs, a component chosen in proportion to its mean ALP. Adapted to
    discrete skills: a skill is its own closest task, so its ALP is the mean
    ``|Δ accuracy|`` over its last ``window`` evaluations (the mean over
    recent samples that a mixture component holds), and the shares are
    ``(1 - ε) ALP / ΣALP + ε / K``. ``epsilon=1`` is the uniform teacher.
    Until some skill shows progress (the first step of an episode), the
    shares are uniform, as ALP-GMM starts with random sampling.
    """

    @takes(ALPOptions)
    def __init__(self, env: Any, seed: int = 0, *, epsilon: float, window: int) -> None:
        self.window = window
        super().__init__(env, seed, memory=self.window + 1)
        self.epsilon = epsilon

    def alp(self) -> np.ndarray:
        """Mean ``|Δ accuracy|`` per skill over the window; 0 where none is measured yet."""
        return np.array([c.mean() if c.size else 0.0 for c in _abs_changes(self.history)])

    def shares(self) -> np.ndarray:
        k = self.num_skills
        alp = self.alp()
        greedy = alp / alp.sum() if alp.sum() > 0 else np.full(k, 1.0 / k)
        return (1.0 - self.epsilon) * greedy + self.epsilon / k


class UCBOptions(Options):
    """Options of :class:`UCBTeacher` (``ucb``)."""

    c: float = Field(default=0.05, ge=0.0, description="weight of the exploration bonus")
    temperature: float = Field(default=0.03, gt=0.0, description="softmax temperature")
    window: int = Field(default=4, ge=1, description="evaluations the progress is averaged over")


class UCBTeacher(ProgressTeacher):
    """A UCB bandit on absolute learning progress, DUMP/SEC-style.

    Wang, Cui, Li, Wan and Zhao (2025), "DUMP: Automated Distribution-Level
    Curriculum Learning for RL-based LLM Post-training": each data
    distribution is an arm whose learnability is the mean absolute advantage
    over a sliding window of its recent samples, and arms are scheduled by
    the upper confidence bound ``value + c sqrt(2 ln N / n)`` (``n`` the
    arm's samples, ``N`` all samples), so an arm that is rarely drawn gets
    explored and one never drawn is drawn first. SEC (Chen et al. 2025,
    "Self-Evolving Curriculum for LLM Reasoning") rewards a bandit over
    problem categories the same way. Adapted: the arms are skills, the
    learnability is the mean ``|Δ accuracy|`` over the skill's last
    ``window`` evaluations (absolute learning progress instead of absolute
    advantage, which a supervised student does not have), ``n`` counts the
    examples the skill has trained on (``observation["examples_used"]``) in
    steps' worth, ``ln N`` is ``ln(1 + N)`` so it is defined from the first
    step, and the scores become the step's shares through a softmax with
    ``temperature``. Skills never trained on share the whole step.
    """

    @takes(UCBOptions)
    def __init__(
        self, env: Any, seed: int = 0, *, c: float, temperature: float, window: int
    ) -> None:
        self.window = window
        super().__init__(env, seed, memory=self.window + 1)
        self.c, self.temperature = c, temperature
        self.pulls = np.zeros(self.num_skills)

    def act(self, observation: Any, info: Mapping[str, Any]) -> np.ndarray:
        try:
            used = np.asarray(observation["examples_used"], dtype=np.float64).reshape(-1)
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(
                "UCBTeacher counts pulls from observation['examples_used']; the observation "
                "has none"
            ) from err
        if used.shape != (self.num_skills,):
            raise ValueError(
                f"observation['examples_used'] has {used.size} values for {self.num_skills} skills"
            )
        self.pulls = used / float(self.step_size or 1000)
        return super().act(observation, info)

    def scores(self) -> np.ndarray:
        """``value + c sqrt(2 ln(1 + N) / n)`` per skill (inf for a skill never trained on)."""
        value = np.array([c.mean() if c.size else 0.0 for c in _abs_changes(self.history)])
        with np.errstate(divide="ignore"):
            bonus = np.sqrt(2.0 * np.log1p(self.pulls.sum()) / self.pulls)
        return value + self.c * bonus

    def shares(self) -> np.ndarray:
        untried = self.pulls <= 0
        if untried.any():
            return untried / untried.sum()
        return _softmax(self.scores() / self.temperature)
