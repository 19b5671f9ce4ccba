"""The texts teachgym writes and reads back: each format's writer next to its reader.

Three formats cross a layer: the OpenEnded observation and the SkillTree
observation (written by the envs, read by teachers), and the ``skill: count``
plan lines (written by teachers, read by the procedural and LLM generators).
Writer and reader live together here, below both the envs and the agents, so a
change to one is a change to the other, and the round-trip tests in
``tests/test_text_formats.py`` hold them to each other. The character rule of
every text space (:func:`is_text_char`) is here too: the envs enforce it and
the LLM teacher cleans its plans with it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from teachgym.types import Allocation, ErrorCase

__all__ = [
    "OPEN_ENDED_MAX_CHARS",
    "PLAN_MAX_CHARS",
    "SKILL_TREE_MAX_CHARS",
    "TextObservation",
    "TreeNode",
    "bad_text_chars",
    "clean_text",
    "format_plan",
    "is_text_char",
    "parse_open_ended",
    "parse_text_plan",
    "parse_tree",
    "write_open_ended",
    "write_tree",
]

#: Longest OpenEnded observation; the written text is cut here.
OPEN_ENDED_MAX_CHARS = 8192
#: Longest OpenEnded action (a plan), in Python ``str`` characters.
PLAN_MAX_CHARS = 4000
#: Longest SkillTree ``tree`` text; the written text is cut here (the reader skips a cut line).
SKILL_TREE_MAX_CHARS = 16384


# -- the character rule of every text space ----------------------------------------------------
def is_text_char(ch: str) -> bool:
    """Whether ``ch`` may appear in a teachgym Text observation or action.

    Any Unicode character except control characters (category ``Cc``: NUL,
    carriage return, escape, ...) and lone surrogates (``Cs``, which cannot
    be encoded as UTF-8 and so could not be logged); newline and tab are the
    two controls allowed, because plans and observations are multi-line.
    Format characters (``Cf``, e.g. a zero-width joiner) and symbols such as
    "×", "–" or "é" pass: an LLM writes them, and refusing them would turn a
    fine plan into an env error.
    """
    if ch in "\n\t":
        return True
    return unicodedata.category(ch) not in ("Cc", "Cs")


def bad_text_chars(text: str) -> list[str]:
    """The distinct characters of ``text`` that :func:`is_text_char` refuses, sorted."""
    return sorted({ch for ch in text if not is_text_char(ch)})


def clean_text(text: str, replacement: str = "?") -> str:
    """``text`` with every refused character replaced, so it fits a text space."""
    return "".join(ch if is_text_char(ch) else replacement for ch in text)


# -- the OpenEnded observation -----------------------------------------------------------------
_HEADER = re.compile(
    r"step (\d+) \| validation accuracy ([0-9.]+) \| budget left (\d+) of (\d+) examples"
)
_SKILLS = "skills: "
_ERRORS = "errors (prompt -> student answer (expected gold)):"


@dataclass(frozen=True)
class TextObservation:
    """An OpenEnded observation, read back: header numbers, skill names, error lines."""

    step: int
    accuracy: float
    budget_left: int
    budget: int
    skills: list[str]
    errors: list[str]


def write_open_ended(
    *,
    step: int,
    accuracy: float,
    budget_left: int,
    budget: int,
    skills: Sequence[str],
    errors: Sequence[ErrorCase],
) -> str:
    """The OpenEnded observation: a header line, the skills line, one line per error.

    Accuracy is shown to three decimals; refused characters (a control
    character in a prompt or answer) become ``?``; the text is cut at
    :data:`OPEN_ENDED_MAX_CHARS`. :func:`parse_open_ended` reads it back.
    """
    lines = [
        f"step {step} | validation accuracy {accuracy:.3f} | "
        f"budget left {budget_left} of {budget} examples",
        _SKILLS + ", ".join(skills),
        _ERRORS,
    ]
    lines += [
        f"{e.prompt} -> {e.student_answer or '<empty>'} (expected {e.gold_answer})" for e in errors
    ]
    return clean_text("\n".join(lines))[:OPEN_ENDED_MAX_CHARS]


def parse_open_ended(text: str) -> TextObservation:
    """Read the text :func:`write_open_ended` writes.

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
    if match is None or len(lines) < 3 or not lines[1].startswith(_SKILLS):
        raise ValueError(
            "not an OpenEnded observation: expected 'step N | validation accuracy A | "
            "budget left B of T examples', then 'skills: ...', then the error lines"
        )
    skills = [s.strip() for s in lines[1][len(_SKILLS) :].split(",") if s.strip()]
    return TextObservation(
        step=int(match.group(1)),
        accuracy=float(match.group(2)),
        budget_left=int(match.group(3)),
        budget=int(match.group(4)),
        skills=skills,
        errors=[line for line in lines[3:] if line.strip()],
    )


# -- the SkillTree observation -----------------------------------------------------------------
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


def write_tree(nodes: Sequence[TreeNode]) -> str:
    """The SkillTree ``tree`` text: one line per node, indented two spaces per depth.

    A line is ``path  acc=A n=N`` (``acc=n/a`` when nothing was measured), with
    `` alloc=K`` on a leaf; the text is cut at :data:`SKILL_TREE_MAX_CHARS`.
    :func:`parse_tree` reads it back.

    >>> write_tree([TreeNode("add", 0.5, 4, None), TreeNode("add/carry", None, 0, 7)])
    'add  acc=0.500 n=4\\n  add/carry  acc=n/a n=0 alloc=7'
    """
    lines = []
    for node in nodes:
        acc = "n/a" if node.accuracy is None else f"{node.accuracy:.3f}"
        line = f"{'  ' * node.skill.count('/')}{node.skill}  acc={acc} n={node.n}"
        if node.allocation is not None:
            line += f" alloc={node.allocation}"
        lines.append(line)
    return "\n".join(lines)[:SKILL_TREE_MAX_CHARS]


def parse_tree(observation: Any) -> list[TreeNode]:
    """Read a SkillTree observation (a dict whose ``tree`` is :func:`write_tree`'s text).

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


# -- text plans: ``skill: count`` lines --------------------------------------------------------
def format_plan(counts: Mapping[str, int]) -> str:
    """A text plan as ``skill: count`` lines, the form :func:`parse_text_plan` reads.

    Skills with no examples are left out, unless all have none.

    >>> format_plan({"add/carry": 3, "sub/borrow": 0})
    'add/carry: 3'
    """
    lines = [f"{skill}: {n}" for skill, n in counts.items() if n > 0]
    return "\n".join(lines) if lines else "\n".join(f"{skill}: 0" for skill in counts)


# A skill name starts with a letter, so "50 x borrow" is not read as skill "5"; it
# is a whole word (never the tail or head of a longer token), so "add/carry300"
# is not read as skill "add/carry3" with count 00.
_NAME = r"(?<![\w./-])[A-Za-z][\w./-]*(?![\w./-])"
# A count: digits, or digits grouped by commas ("1,000"); not part of a longer token.
_COUNT = r"(?<![\w./,-])(\d{1,3}(?:,\d{3})+|\d+)(?![\w,]*\d)(?![ \t]*%)"
# What may stand between a name and its count, on one line: spaces, ":", "=", "*",
# "x" or the multiplication sign "×", hyphens and dashes ("-", "–", "—"), arrows,
# an opening parenthesis, markdown emphasis.
_SEP = r"[ \t:=*×xX–—\-(>→_]*"
# Words an LLM puts between a count and the skill: "300 examples of add/carry".
_WORDS = (
    r"(?:(?:new|more|extra|additional)[ \t]+)?"
    r"(?:examples?|problems?|items?|questions?|exercises?)"
    r"(?:[ \t]+(?:of|for|on|in|with|about))?[ \t:]*"
)
_NAME_FIRST = re.compile(rf"({_NAME}){_SEP}{_COUNT}")
_COUNT_FIRST = re.compile(rf"{_COUNT}{_SEP}(?:{_WORDS})?({_NAME})")


def parse_text_plan(text: str, skills: Sequence[str]) -> Allocation:
    """Read ``skill: count`` pairs (either order) from free text.

    A skill may be named by its full path or by a unique last segment, in any
    letter case. Counts for the same skill add up; unknown names are ignored.
    What an LLM writes around the pairs is tolerated: list bullets (``-``,
    ``*``, ``•``, ``1.``), the separators ``:``, ``=``, ``x``, ``×``, ``-``,
    ``–`` and ``—``, markdown emphasis, a parenthesis, counts grouped with
    commas (``1,000``), and words such as ``examples of``. A pair never spans
    two lines. When a count could belong to the name before it or the name
    after it (``5 sub/borrow 2``), a name followed by its own count keeps it.

    >>> skills = ["add/carry", "sub/borrow"]
    >>> parse_text_plan("Focus on carries.\\nadd/carry: 300\\n50 x borrow", skills)
    Allocation(counts={'add/carry': 300, 'sub/borrow': 50})
    >>> parse_text_plan("• add/carry × 300\\n– 1,000 examples of sub/borrow", skills)
    Allocation(counts={'add/carry': 300, 'sub/borrow': 1000})
    >>> parse_text_plan("- **Carry** – 40 examples\\n* 20 × borrow", skills)
    Allocation(counts={'add/carry': 40, 'sub/borrow': 20})
    """
    by_name: dict[str, str] = {s.lower(): s for s in skills}
    tails = Counter(s.rsplit("/", 1)[-1].lower() for s in skills)
    for s in skills:
        tail = s.rsplit("/", 1)[-1].lower()
        if tails[tail] == 1:
            by_name.setdefault(tail, s)

    def lookup(name: str) -> str | None:
        return by_name.get(name.rstrip("./-_").lower())

    counts: Counter[str] = Counter()
    for line in text.splitlines():
        pos = 0
        while pos < len(line):
            a = _NAME_FIRST.search(line, pos)
            b = _COUNT_FIRST.search(line, pos)
            if b is not None and (a is None or b.start() < a.start()):
                # "5 sub/borrow 2": the name has a count of its own after it; take that.
                after = _NAME_FIRST.match(line, b.start(2))
                skill = lookup(b.group(2))
                if skill is not None and not (after is not None and lookup(after.group(1))):
                    counts[skill] += int(b.group(1).replace(",", ""))
                    pos = b.end()
                else:
                    pos = b.start() + 1
            elif a is not None:
                skill = lookup(a.group(1))
                if skill is not None:
                    counts[skill] += int(a.group(2).replace(",", ""))
                    pos = a.end()
                else:
                    # "Teach carries: 300 examples of add/carry": the count is the next pair's.
                    pos = a.start() + 1
            else:
                break
    return Allocation(counts=dict(counts))
