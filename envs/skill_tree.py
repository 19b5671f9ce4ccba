"""``teachgym/SkillTree-v0``: grow a skill tree and allocate data over its leaves."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from pydantic import ValidationError

from teachgym.config import ExperimentConfig
from teachgym.envs.base import Parts, TeacherEnv, UnicodeText
from teachgym.envs.skills import SkillTree
from teachgym.text_formats import SKILL_TREE_MAX_CHARS, TreeNode, write_tree
from teachgym.types import Allocation, TreeAction

#: The ``tree`` text's length limit (the format's, see :mod:`teachgym.text_formats`).
OBSERVATION_MAX_CHARS = SKILL_TREE_MAX_CHARS
_SEGMENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class TreeActionSpace(spaces.Space[TreeAction]):
    """The set of :class:`~teachgym.types.TreeAction` values valid for a tree.

    The tree changes during an episode, so the space holds a function that
    returns the current tree rather than a copy. ``sample`` mostly exploits (re-
    allocates among a node's leaves) and sometimes explores (adds one child).
    """

    def __init__(self, tree: Callable[[], SkillTree], step_size: int, seed: int | None = None):
        super().__init__(shape=None, dtype=None, seed=seed)
        self._tree = tree
        self._step_size = step_size

    def sample(self, mask: Any = None, probability: Any = None) -> TreeAction:
        tree = self._tree()
        node = str(self.np_random.choice(tree.nodes))
        if self.np_random.random() < 0.2:
            name = f"s{int(self.np_random.integers(1_000_000))}"
            return TreeAction(
                kind="explore",
                skill=node,
                new_subskills=[name],
                allocation={name: int(self.np_random.integers(0, self._step_size))},
            )
        leaves = tree.leaves_under(node)
        counts = self.np_random.integers(0, self._step_size // max(1, len(leaves)) + 1, len(leaves))
        return TreeAction(
            kind="exploit",
            skill=node,
            allocation={leaf: int(n) for leaf, n in zip(leaves, counts, strict=True)},
        )

    def contains(self, x: Any) -> bool:
        return isinstance(x, TreeAction) and x.skill in self._tree()

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"TreeActionSpace(nodes={len(self._tree().nodes)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TreeActionSpace) and other._tree is self._tree


class SkillTreeEnv(TeacherEnv):
    """Explore new subskills or exploit known ones; data follows a standing allocation.

    ## Description

    The skill-tree setting of DataEnvGym. The env keeps a standing allocation:
    how many examples each leaf skill gets per step. Each step the teacher
    either *explores* (adds subskills under a node, with their allocations) or
    *exploits* (sets the allocation of existing leaves under a node); then data
    is made for every leaf per the allocation. An allocation that adds up
    to more than ``examples_per_step`` is scaled down to it when it is set,
    so the standing allocation the observation shows is what a step makes. With the ``procedural``
    generator an invented subskill is served by the nearest ancestor the task
    can sample; an LLM generator can make genuinely new data for it.

    ## Action Space

    :class:`TreeActionSpace`: a :class:`~teachgym.types.TreeAction`, or a dict
    of its fields. Allocation keys are leaf paths, or names relative to
    ``skill``. Unknown nodes, non-leaf targets or names that exist already
    raise ``ValueError`` and leave the env unchanged. The action has no
    free-text part: a new subskill name is one path segment of ASCII letters,
    digits, ``_``, ``.`` or ``-`` (skill paths are identifiers in logs and
    configs), so a teacher that reads names from an LLM must slug them first
    (the ``llm`` teacher does).

    ## Observation Space

    ``Dict``:

    | Key           | Space                  | Meaning                                        |
    |---------------|------------------------|------------------------------------------------|
    | `tree`        | UnicodeText(0..16384)  | one line per node: path, val accuracy, count,   |
    |               |                        | standing allocation                             |
    | `budget_left` | Box(0, budget, (1,))   | examples the student may still train on         |

    ``info["tree"]`` has the same per-node data as a list of dicts.
    :func:`teachgym.text_formats.write_tree` writes the text and
    :func:`~teachgym.text_formats.parse_tree` reads it back.

    ## Rewards

    The change in mean per-skill validation accuracy, minus
    ``cost_per_example`` per accepted example. ``info["skill_rewards"]`` gives
    each task skill's own accuracy change.

    ## Budget

    The teacher pays for the examples the student trains on, nothing else:
    ``budget_left`` falls by ``info["examples_accepted"]``. A plan is clamped
    to the step cap, ``min(examples_per_step, budget_left)``, before the
    generator runs (proportions kept), so no plan makes more than a step can
    use. Examples the filter drops (duplicates, evaluation items, bad
    characters) cost nothing; ``info["examples_by_skill"]`` shows per skill
    how many were made, accepted and rejected, and why.

    ## Starting State

    The task's own skill tree, allocation spread evenly over its leaves, the
    untrained student's evaluation.

    ## Episode End

    Terminated when the budget is spent; truncated after ``max_steps``. The
    last ``info`` holds ``test_accuracy``.

    ## Arguments

    Every :class:`~teachgym.config.ExperimentConfig` key, through
    ``gymnasium.make``.

    ## Examples

    >>> import gymnasium as gym
    >>> import teachgym
    >>> from teachgym.types import TreeAction
    >>> env = gym.make("teachgym/SkillTree-v0", budget=40, examples_per_step=20,
    ...                task_kwargs={"val_per_skill": 4, "test_per_skill": 4})
    >>> obs, info = env.reset(seed=0)
    >>> obs["tree"].splitlines()[0]
    'add  acc=0.000 n=12'
    >>> action = TreeAction(kind="explore", skill="add/carry", new_subskills=["three_carries"],
    ...                     allocation={"three_carries": 5})
    >>> obs, reward, terminated, truncated, info = env.step(action)
    >>> "add/carry/three_carries" in env.unwrapped.skills
    True
    """

    kind = "skill_tree"

    def __init__(self, config: ExperimentConfig, parts: Parts, **kwargs: Any) -> None:
        super().__init__(config, parts, **kwargs)
        self._alloc: dict[str, int] = self._even_allocation(self.tree.leaves)
        # The action read by _read_action and its new standing allocation,
        # applied by _commit_plan only once the step has succeeded.
        self._pending: tuple[TreeAction, dict[str, int]] | None = None
        self.action_space = TreeActionSpace(lambda: self.tree, self.config.examples_per_step)
        self.observation_space = spaces.Dict(
            {
                "tree": UnicodeText(max_length=OBSERVATION_MAX_CHARS, min_length=0),
                "budget_left": spaces.Box(
                    0.0, float(self.config.budget), shape=(1,), dtype=np.float32
                ),
            }
        )

    def _even_allocation(self, leaves: Sequence[str]) -> dict[str, int]:
        alloc = Allocation.from_weights(
            list(leaves), [1.0] * len(leaves), self.config.examples_per_step
        )
        return dict(alloc.counts)

    def _on_reset(self) -> None:
        self._alloc = self._even_allocation(self.tree.leaves)

    # -- reading actions --------------------------------------------------
    def _resolve(self, skill: str, name: str) -> str:
        return name if name == skill or name.startswith(skill + "/") else f"{skill}/{name}"

    def _read_action(self, action: Any) -> Allocation:
        if isinstance(action, dict):
            try:
                action = TreeAction.model_validate(action)
            except ValidationError as err:
                raise ValueError(f"invalid TreeAction: {err}") from None
        if not isinstance(action, TreeAction):
            raise ValueError(f"action must be a TreeAction or a dict, got {type(action).__name__}")
        if action.skill not in self.tree:
            raise ValueError(
                f"no node {action.skill!r} in the skill tree; nodes: {self.tree.nodes}"
            )
        alloc = dict(self._alloc)
        if action.kind == "explore":
            new = []
            for name in action.new_subskills:
                if "/" in name or not name or not set(name) <= _SEGMENT_CHARS:
                    raise ValueError(
                        f"subskill name {name!r} must be one path segment of letters, digits, "
                        f"'_', '.' or '-'"
                    )
                path = f"{action.skill}/{name}"
                if path in self.tree or path in new:
                    raise ValueError(f"subskill {path!r} exists already")
                new.append(path)
            for key in action.allocation:
                if self._resolve(action.skill, key) not in new:
                    raise ValueError(f"explore allocation names {key!r}, not a new subskill")
            alloc.pop(action.skill, None)
            for path in new:
                alloc[path] = 0
        else:
            leaves = self.tree.leaves_under(action.skill)
            for key in action.allocation:
                path = self._resolve(action.skill, key)
                if path not in leaves:
                    raise ValueError(
                        f"exploit allocation names {key!r}, not a leaf under {action.skill!r} "
                        f"(leaves: {leaves})"
                    )
        for key, n in action.allocation.items():
            alloc[self._resolve(action.skill, key)] = n
        # The standing allocation never exceeds a step: what the observation
        # shows is what a step makes (unless the budget left is smaller).
        alloc = dict(Allocation(counts=alloc).clamped(self.config.examples_per_step).counts)
        self._pending = (action, alloc)
        return Allocation(counts=alloc)

    def _plan_skills(self, plan: Any) -> list[str]:
        return list(plan.counts)

    def _commit_plan(self, plan: Any) -> None:
        assert self._pending is not None
        action, alloc = self._pending
        if action.kind == "explore":
            for name in action.new_subskills:
                self.tree.add(f"{action.skill}/{name}")
        self._alloc = alloc

    # -- observation and state -------------------------------------------
    def _nodes(self) -> list[TreeNode]:
        report = self.report
        nodes = []
        for node in self.tree.nodes:
            stats = [s for k, s in report.skills.items() if k == node or k.startswith(node + "/")]
            n = sum(s.total for s in stats)
            acc = sum(s.correct for s in stats) / n if n else None
            leaf = not self.tree.children(node)
            alloc = self._alloc.get(node, 0) if leaf else None
            nodes.append(TreeNode(skill=node, accuracy=acc, n=n, allocation=alloc))
        return nodes

    def observe(self) -> dict[str, Any]:
        return {
            "tree": write_tree(self._nodes()),
            "budget_left": np.array([self.budget_left], dtype=np.float32),
        }

    def _info(self, **extra: Any) -> dict[str, Any]:
        info = super()._info(**extra)
        info["tree"] = [dataclasses.asdict(node) for node in self._nodes()]
        info["allocation"] = dict(self._alloc)
        return info

    def step(self, action: Any):
        before = self.report.skill_accuracy()
        obs, reward, terminated, truncated, info = super().step(action)
        after = self.report.skill_accuracy()
        info["skill_rewards"] = {s: after[s] - before.get(s, 0.0) for s in after}
        return obs, reward, terminated, truncated, info

    def _extra_state(self) -> dict[str, Any]:
        return {"allocation": dict(self._alloc)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._alloc = {k: int(v) for k, v in state["allocation"].items()}
