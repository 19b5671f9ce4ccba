"""What the OpenEnded and SkillTree teachers share: a seeded base and observation readers.

SkillList teachers get a numeric observation and :class:`SkillListTeacher`.
The other two envs show text, so a teacher for them must read it back: the
readers here parse exactly the formats that ``envs/open_ended.py`` and
``envs/skill_tree.py`` write (documented in their Observation Space
sections), in one place, so heuristic and LLM teachers cannot drift apart.
Nothing here imports :mod:`teachgym.envs` at import time (the envs import
this package).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from teachgym.config import ENV_KINDS
from teachgym.types import Allocation

EnvKind = Literal["skill_list", "open_ended", "skill_tree"]


def env_kind(env: Any) -> EnvKind | None:
    """Which of the three teachgym envs ``env`` is (an env, a wrapper or a
    :class:`~teachgym.agents.policies.view.TeacherView`); None for others."""
    kind = getattr(getattr(env, "unwrapped", env), "kind", None)
    return kind if kind in ENV_KINDS else None  # type: ignore[return-value]


# -- OpenEnded observations ------------------------------------------------
_HEADER = re.compile(
    r"step (\d+) \| validation accuracy ([0-9.]+) \| budget left (\d+) of (\d+) examples"
)


@dataclass(frozen=True)
class TextObservation:
    """An OpenEnded observation, read back: header numbers, skill names, error lines."""

    step: int
    accuracy: float
    budget_left: int
    budget: int
    skills: list[str]
    errors: list[str]


def parse_open_ended(text: str) -> TextObservation:
    """Read the OpenEnded observation text (see ``OpenEndedEnv._observation``).

    >>> obs = parse_open_ended(
    ...     "step 2 | validation accuracy 0.250 | budget left 40 of 60 examples\\n"
    ...     "skills: add/carry, cmp/3d\\nerrors (prompt -> ...):\\n1+9= -> 1 (expected 10)"
    ... )
    >>> obs.step, obs.accuracy, obs.budget_left, obs.skills, obs.errors
    (2, 0.25, 40, ['add/carry', 'cmp/3d'], ['1+9= -> 1 (expected 10)'])
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an OpenEnded text observation, got {type(text).__name__}")
    lines = text.split("\n")
    match = _HEADER.match(lines[0]) if lines else None
    if match is None or len(lines) < 3 or not lines[1].startswith("skills: "):
        raise ValueError(
            "not an OpenEnded observation: expected 'step N | validation accuracy A | "
            "budget left B of T examples', then 'skills: ...', then the error lines"
        )
    skills = [s.strip() for s in lines[1][len("skills: ") :].split(",") if s.strip()]
    return TextObservation(
        step=int(match.group(1)),
        accuracy=float(match.group(2)),
        budget_left=int(match.group(3)),
        budget=int(match.group(4)),
        skills=skills,
        errors=[line for line in lines[3:] if line.strip()],
    )


# -- SkillTree observations ------------------------------------------------
_NODE = re.compile(r"^( *)(\S+)  acc=(\S+) n=(\d+)(?: alloc=(\d+))?$")


@dataclass(frozen=True)
class TreeNode:
    """One line of the SkillTree observation. ``allocation`` is None for inner nodes."""

    skill: str
    accuracy: float | None
    n: int
    allocation: int | None

    @property
    def is_leaf(self) -> bool:
        return self.allocation is not None

    @property
    def root(self) -> str:
        return self.skill.split("/", 1)[0]


def parse_tree(observation: Any) -> list[TreeNode]:
    """Read the SkillTree observation's ``tree`` text (see ``SkillTreeEnv._observation``).

    >>> text = "add  acc=0.500 n=4\\n  add/carry  acc=n/a n=0 alloc=7"
    >>> [n.skill for n in parse_tree({"tree": text})]
    ['add', 'add/carry']
    """
    text = observation.get("tree") if isinstance(observation, Mapping) else None
    if not isinstance(text, str):
        raise ValueError("expected a SkillTree observation, a dict with a 'tree' text")
    nodes = []
    for line in text.split("\n"):
        match = _NODE.match(line)
        if match is None:
            continue  # the text may be cut at its length limit mid-line
        acc = match.group(3)
        alloc = match.group(5)
        nodes.append(
            TreeNode(
                skill=match.group(2),
                accuracy=None if acc == "n/a" else float(acc),
                n=int(match.group(4)),
                allocation=None if alloc is None else int(alloc),
            )
        )
    if not nodes:
        raise ValueError("the SkillTree observation lists no nodes")
    return nodes


def measured_accuracy(nodes: Sequence[TreeNode]) -> dict[str, float | None]:
    """Each node's accuracy, or its nearest measured ancestor's.

    A subskill a teacher invented has no validation items (``n=0``), so it is
    judged by the node it was split from: the data it gets is that node's.
    """
    own = {node.skill: node.accuracy for node in nodes}
    out: dict[str, float | None] = {}
    for node in nodes:
        path = node.skill
        acc = own.get(path)
        while acc is None and "/" in path:
            path = path.rsplit("/", 1)[0]
            acc = own.get(path)
        out[node.skill] = acc
    return out


# -- plans -----------------------------------------------------------------
def format_plan(counts: Mapping[str, int]) -> str:
    """A text plan in the ``skill: count`` lines that the procedural generator reads."""
    lines = [f"{skill}: {n}" for skill, n in counts.items() if n > 0]
    return "\n".join(lines) if lines else "\n".join(f"{skill}: 0" for skill in counts)


def split(skills: Sequence[str], weights: Any, total: int) -> dict[str, int]:
    """``total`` examples over ``skills`` in proportion to ``weights`` (exact sum)."""
    return dict(Allocation.from_weights(list(skills), weights, max(0, int(total))).counts)


def name_lookup(skills: Sequence[str]) -> dict[str, str]:
    """Names that identify a skill: its path, or a last segment no other skill has.

    Lower-cased, because an LLM that writes ``Add/Carry`` means ``add/carry``.

    >>> name_lookup(["add/carry", "sub/carry", "mul/2x1"])
    {'add/carry': 'add/carry', 'sub/carry': 'sub/carry', 'mul/2x1': 'mul/2x1', '2x1': 'mul/2x1'}
    """
    out = {s.lower(): s for s in skills}
    tails: dict[str, list[str]] = {}
    for s in skills:
        tails.setdefault(s.rsplit("/", 1)[-1].lower(), []).append(s)
    for tail, owners in tails.items():
        if len(owners) == 1:
            out.setdefault(tail, owners[0])
    return out


def format_errors(errors: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    """``info["errors"]`` (ErrorCase dicts) as prompt lines, at most ``limit``."""
    return [
        f"[{e.get('skill', '?')}] {e.get('prompt', '')} -> "
        f"{e.get('student_answer') or '<empty>'} (expected {e.get('gold_answer', '?')})"
        for e in list(errors)[: max(0, limit)]
    ]
