"""What the teachers share: the env kind, plan arithmetic and the observation readers.

SkillList teachers get a numeric observation. The other two envs show text,
so a teacher for them must read it back; the readers (:func:`parse_open_ended`,
:func:`parse_tree`) and the plan writer (:func:`format_plan`) live with the
envs' writers in :mod:`teachgym.text_formats` and are imported here, so
heuristic and LLM teachers read what the envs write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from teachgym.config import ENV_KINDS
from teachgym.text_formats import TextObservation as TextObservation
from teachgym.text_formats import TreeNode as TreeNode
from teachgym.text_formats import format_plan as format_plan
from teachgym.text_formats import parse_open_ended as parse_open_ended
from teachgym.text_formats import parse_tree as parse_tree
from teachgym.types import Allocation

EnvKind = Literal["skill_list", "open_ended", "skill_tree"]


def env_kind(env: Any) -> EnvKind | None:
    """Which of the three teachgym envs ``env`` is (an env, a wrapper or a
    :class:`~teachgym.agents.policies.view.TeacherView`); None for others."""
    kind = getattr(getattr(env, "unwrapped", env), "kind", None)
    return kind if kind in ENV_KINDS else None  # type: ignore[return-value]


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
