"""Built-in (non-LLM) teachers for OpenEnded-v0 and SkillTree-v0.

So that every env runs from the command line without an LLM: ``uniform`` and
``random`` exist for all three envs (see :mod:`~teachgym.agents.policies.dispatch`),
and each text env has one heuristic that uses what its observation shows:

- ``text_focus`` (OpenEnded): the observation has no per-skill accuracy and
  its error lines carry no skill label, so a teacher that claimed to find
  "the weakest skill" there would be guessing. This one writes an even plan
  plus a focus skill, and learns from its own rewards which focus pays.
- ``tree_weakest`` (SkillTree): allocate over the leaves by weakness (like
  ``weakest`` on SkillList) and split a leaf that stays weak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from teachgym.agents.policies.base import SeededTeacher
from teachgym.agents.policies.baselines import RandomOptions, WeakestOptions, weakness_shares
from teachgym.agents.policies.common import measured_accuracy, split
from teachgym.options import Options, takes
from teachgym.text_formats import TreeNode, format_plan, parse_open_ended, parse_tree
from teachgym.types import TreeAction


# -- OpenEnded ---------------------------------------------------------------
class TextUniformTeacher(SeededTeacher):
    """OpenEnded: the step's examples spread evenly over the listed skills (``skill: n`` lines)."""

    def act(self, observation: Any, info: Mapping[str, Any]) -> str:
        obs = parse_open_ended(observation)
        return format_plan(split(obs.skills, np.ones(len(obs.skills)), self.cap(obs.budget_left)))


class TextRandomTeacher(SeededTeacher):
    """OpenEnded: a fresh Dirichlet(``concentration``) mix each step, as ``skill: n`` lines."""

    @takes(RandomOptions)
    def __init__(self, env: Any, seed: int = 0, *, concentration: float) -> None:
        super().__init__(env, seed)
        self.concentration = concentration

    def act(self, observation: Any, info: Mapping[str, Any]) -> str:
        obs = parse_open_ended(observation)
        shares = self.rng.dirichlet(np.full(len(obs.skills), self.concentration))
        return format_plan(split(obs.skills, shares, self.cap(obs.budget_left)))


class TextFocusOptions(Options):
    """Options of :class:`TextFocusTeacher` (``text_focus``)."""

    floor: float = Field(
        default=0.5, ge=0.0, le=1.0, description="fraction of a step spread evenly"
    )
    epsilon: float = Field(
        default=0.1, ge=0.0, le=1.0, description="chance of a random focus skill"
    )
    smoothing: float = Field(
        default=0.5, gt=0.0, le=1.0, description="weight of the newest reward in a focus's average"
    )


class TextFocusTeacher(SeededTeacher):
    """OpenEnded: an even plan plus one focus skill, chosen by the rewards focusing earned.

    A fraction ``floor`` of each step's examples is spread evenly over the
    listed skills (no skill is starved); the rest goes to one *focus* skill.
    The teacher tries every skill as the focus once, in the listed order, then
    picks the focus whose focused steps earned the highest reward (an
    exponential average with weight ``smoothing`` on the newest reward),
    trying a random one with probability ``epsilon``. Why not "weakest": the
    OpenEnded observation shows the overall accuracy and unlabelled error
    lines only, and the reward is the one per-step signal it has.

    >>> from teachgym.text_formats import parse_open_ended
    >>> from types import SimpleNamespace
    >>> config = SimpleNamespace(examples_per_step=10)
    >>> env = SimpleNamespace(unwrapped=SimpleNamespace(config=config))
    >>> obs = ("step 0 | validation accuracy 0.000 | budget left 60 of 60 examples\\n"
    ...        "skills: a, b\\nerrors:")
    >>> print(TextFocusTeacher(env, floor=0.4).act(obs, {}))
    a: 8
    b: 2
    """

    @takes(TextFocusOptions)
    def __init__(
        self, env: Any, seed: int = 0, *, floor: float, epsilon: float, smoothing: float
    ) -> None:
        super().__init__(env, seed)
        self.floor, self.epsilon, self.smoothing = floor, epsilon, smoothing
        self.value: dict[str, float] = {}  # reward average per focus skill
        self.focus: str | None = None  # the focus of the last act, credited by update()

    def choose_focus(self, skills: Sequence[str]) -> str:
        untried = [s for s in skills if s not in self.value]
        if untried:
            return untried[0]
        if self.rng.random() < self.epsilon:
            return str(skills[int(self.rng.integers(len(skills)))])
        return max(skills, key=lambda s: self.value[s])  # max() keeps the first of ties

    def act(self, observation: Any, info: Mapping[str, Any]) -> str:
        obs = parse_open_ended(observation)
        self.focus = self.choose_focus(obs.skills)
        k = len(obs.skills)
        shares = np.full(k, self.floor / k)
        shares[obs.skills.index(self.focus)] += 1.0 - self.floor
        return format_plan(split(obs.skills, shares, self.cap(obs.budget_left)))

    def update(
        self,
        observation: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: Mapping[str, Any],
    ) -> None:
        if self.focus is None:
            return
        old = self.value.get(self.focus)
        new = float(reward)
        if old is not None:
            new = (1 - self.smoothing) * old + self.smoothing * new
        self.value[self.focus] = new
        self.focus = None

    def _extra_state(self) -> dict[str, Any]:
        return {"value": dict(self.value), "focus": self.focus}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.value = {str(k): float(v) for k, v in state.get("value", {}).items()}
        self.focus = state.get("focus")


# -- SkillTree ---------------------------------------------------------------
def exploit_toward(nodes: Sequence[TreeNode], target: Mapping[str, int]) -> TreeAction:
    """The exploit action that moves the standing allocation most toward ``target``.

    An exploit sets the leaves under one node, and the roots of a forest have
    no common node, so one step can re-allocate one root's subtree: the one
    whose leaves differ most from ``target`` (the first root when none do).
    Repeated each step, the standing allocation converges to the target.
    """
    leaves = [n for n in nodes if n.is_leaf]
    roots = list(dict.fromkeys(n.root for n in nodes))
    gap = {r: 0 for r in roots}
    for leaf in leaves:
        gap[leaf.root] += abs(int(leaf.allocation or 0) - target.get(leaf.skill, 0))
    root = max(roots, key=lambda r: gap[r])  # max() keeps the first of ties
    if gap[root] == 0:
        return TreeAction(kind="exploit", skill=roots[0])  # nothing to change
    allocation = {leaf.skill: target.get(leaf.skill, 0) for leaf in leaves if leaf.root == root}
    return TreeAction(kind="exploit", skill=root, allocation=allocation)


def sum_alloc(nodes: Sequence[TreeNode]) -> int:
    """The standing allocation's total: the step size for a teacher that was not told it."""
    return sum(int(n.allocation or 0) for n in nodes if n.is_leaf)


class TreeUniformTeacher(SeededTeacher):
    """SkillTree: keep every leaf's allocation even; never explores.

    The env starts with an even allocation, so in an episode of this teacher
    every exploit is a no-op; it exists so that ``uniform`` means the same
    "no curriculum" control on every env.
    """

    def act(self, observation: Any, info: Mapping[str, Any]) -> TreeAction:
        nodes = parse_tree(observation)
        leaves = [n.skill for n in nodes if n.is_leaf]
        target = split(leaves, np.ones(len(leaves)), self.step_size or sum_alloc(nodes))
        return exploit_toward(nodes, target)


class TreeRandomTeacher(SeededTeacher):
    """SkillTree: a fresh Dirichlet(``concentration``) target mix over the leaves each step."""

    @takes(RandomOptions)
    def __init__(self, env: Any, seed: int = 0, *, concentration: float) -> None:
        super().__init__(env, seed)
        self.concentration = concentration

    def act(self, observation: Any, info: Mapping[str, Any]) -> TreeAction:
        nodes = parse_tree(observation)
        leaves = [n.skill for n in nodes if n.is_leaf]
        shares = self.rng.dirichlet(np.full(len(leaves), self.concentration))
        return exploit_toward(nodes, split(leaves, shares, self.step_size or sum_alloc(nodes)))


class TreeWeakestOptions(WeakestOptions):
    """Options of :class:`TreeWeakestTeacher` (``tree_weakest``): the weakest rule's and
    when to split a leaf."""

    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="accuracy below which a leaf is weak"
    )
    patience: int = Field(default=3, ge=1, description="weak observations in a row before a split")
    branching: int = Field(default=2, ge=1, description="subskills a split makes")
    max_depth: int = Field(default=3, ge=1, description="path segments a split leaf may have")


class TreeWeakestTeacher(SeededTeacher):
    """SkillTree: exploit the weakest leaves; split a leaf that stays weak.

    Exploit: the target allocation gives leaf k a share proportional to
    ``(1 - acc_k + eps) ** power`` mixed with an even ``floor`` (the
    :class:`~teachgym.agents.policies.baselines.WeakestTeacher` rule), and
    each step moves one root's leaves to it (see :func:`exploit_toward`). An
    invented leaf has no validation items and is judged by its nearest
    measured ancestor.

    Explore: a leaf whose accuracy has been below ``threshold`` for
    ``patience`` observations in a row (and is fewer than ``max_depth``
    segments deep) is split into ``branching`` subskills named after it
    (``add/carry`` -> ``add/carry/carry_1``, ...), which share its target
    count. The idea of DataEnvGym's skill tree: a skill the student does not
    pick up from more of the same data may need narrower data. With the
    procedural generator a subskill is served by its ancestor, so splitting
    mostly concentrates data; an LLM generator can make it different.
    """

    @takes(TreeWeakestOptions)
    def __init__(
        self,
        env: Any,
        seed: int = 0,
        *,
        power: float,
        eps: float,
        floor: float,
        threshold: float,
        patience: int,
        branching: int,
        max_depth: int,
    ) -> None:
        super().__init__(env, seed)
        self.power, self.eps, self.floor = power, eps, floor
        self.threshold, self.patience = threshold, patience
        self.branching, self.max_depth = branching, max_depth
        self.weak_steps: dict[str, int] = {}  # consecutive weak observations per leaf

    def target(self, nodes: Sequence[TreeNode], total: int) -> dict[str, int]:
        leaves = [n.skill for n in nodes if n.is_leaf]
        measured = measured_accuracy(nodes)
        acc = [measured[s] if measured[s] is not None else 0.0 for s in leaves]
        return split(leaves, weakness_shares(acc, self.power, self.eps, self.floor), total)

    def act(self, observation: Any, info: Mapping[str, Any]) -> TreeAction:
        nodes = parse_tree(observation)
        measured = measured_accuracy(nodes)
        leaves = [n for n in nodes if n.is_leaf]
        self.weak_steps = {
            leaf.skill: (
                self.weak_steps.get(leaf.skill, 0) + 1
                if measured[leaf.skill] is not None and measured[leaf.skill] < self.threshold
                else 0
            )
            for leaf in leaves
        }
        target = self.target(nodes, self.step_size or sum_alloc(nodes))
        ripe = [
            leaf.skill
            for leaf in leaves
            if self.weak_steps[leaf.skill] >= self.patience
            and leaf.skill.count("/") + 1 < self.max_depth
        ]
        if not ripe:
            return exploit_toward(nodes, target)
        skill = min(ripe, key=lambda s: (measured[s], -self.weak_steps[s]))
        tail = skill.rsplit("/", 1)[-1]
        names = [f"{tail}_{i + 1}" for i in range(self.branching)]
        counts = split(names, np.ones(len(names)), max(target[skill], len(names)))
        del self.weak_steps[skill]  # its children start their own count
        return TreeAction(kind="explore", skill=skill, new_subskills=names, allocation=counts)

    def _extra_state(self) -> dict[str, Any]:
        return {"weak_steps": dict(self.weak_steps)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.weak_steps = {str(k): int(v) for k, v in state.get("weak_steps", {}).items()}
