"""Procedural arithmetic with skill labels: the embedded default task.

Each leaf skill is a problem family with its own difficulty for a small
transformer: carries and borrows need information to flow across digit
positions, multiplication needs a table plus a carry chain. Every family has
a problem space several times larger than its validation and test sets, so a
student can only score on them by learning the procedure, not by memorising
evaluation items it never sees. Distinct prompts per family (``a+b`` and
``b+a`` count as two): the 2-digit families have 1,620 (``sub/borrow``) to
6,120 (``add/carry``), the 3-digit ones 108,900 to 810,000 (``cmp/3d``), and
``mul/2x1`` only 720. So with the default 128 + 128 evaluation items per skill
about a sixth of a 2-digit space is held out, and the environment's
decontamination filter drops generated examples that hit it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from teachgym.envs.skills import SkillTree
from teachgym.envs.tasks.base import Split
from teachgym.types import Problem

Family = Callable[[np.random.Generator], tuple[str, str]]


def _digits(rng: np.random.Generator, n: int, first_min: int = 1) -> list[int]:
    return [int(rng.integers(first_min if i == 0 else 0, 10)) for i in range(n)]


def _num(ds: Sequence[int]) -> int:
    return int("".join(map(str, ds)))


def _add_no_carry(rng: np.random.Generator, n: int = 3) -> tuple[str, str]:
    a, b = [], []
    for i in range(n):
        lo = 1 if i == 0 else 0
        x = int(rng.integers(lo, 9 - lo + 1))
        y = int(rng.integers(lo, 9 - x + 1))
        a.append(x)
        b.append(y)
    x, y = _num(a), _num(b)
    return f"{x}+{y}=", str(x + y)


def _has_carry(x: int, y: int) -> bool:
    while x or y:
        if x % 10 + y % 10 >= 10:
            return True
        x, y = x // 10, y // 10
    return False


def _has_borrow(x: int, y: int) -> bool:
    while y:
        if x % 10 < y % 10:
            return True
        x, y = x // 10, y // 10
    return False


def _add_carry(rng: np.random.Generator, n: int = 3) -> tuple[str, str]:
    while True:
        x, y = int(rng.integers(10 ** (n - 1), 10**n)), int(rng.integers(10 ** (n - 1), 10**n))
        if _has_carry(x, y):
            return f"{x}+{y}=", str(x + y)


def _sub_no_borrow(rng: np.random.Generator, n: int = 3) -> tuple[str, str]:
    a = _digits(rng, n)
    b = [int(rng.integers(1 if i == 0 else 0, d + 1)) for i, d in enumerate(a)]
    x, y = _num(a), _num(b)
    return f"{x}-{y}=", str(x - y)


def _sub_borrow(rng: np.random.Generator, n: int = 3) -> tuple[str, str]:
    while True:
        x, y = int(rng.integers(10 ** (n - 1), 10**n)), int(rng.integers(10 ** (n - 1), 10**n))
        x, y = max(x, y), min(x, y)
        if _has_borrow(x, y):
            return f"{x}-{y}=", str(x - y)


def _mul_2x1(rng: np.random.Generator) -> tuple[str, str]:
    x, y = int(rng.integers(10, 100)), int(rng.integers(2, 10))
    return f"{x}*{y}=", str(x * y)


def _mul_3x1(rng: np.random.Generator) -> tuple[str, str]:
    x, y = int(rng.integers(100, 1000)), int(rng.integers(2, 10))
    return f"{x}*{y}=", str(x * y)


def _compare(rng: np.random.Generator) -> tuple[str, str]:
    x = int(rng.integers(100, 1000))
    # Share a prefix often, so that the first digit alone rarely decides.
    keep = int(rng.integers(0, 4))
    tail = _digits(rng, 3 - keep, first_min=0)
    y = _num(list(map(int, str(x)[:keep])) + tail) if keep < 3 else x
    y = max(y, 100)
    sign = "<" if x < y else ">" if x > y else "="
    return f"{x}?{y}=", sign


FAMILIES: dict[str, Family] = {
    "add/no_carry": lambda r: _add_no_carry(r, 2),
    "add/carry": lambda r: _add_carry(r, 2),
    "add/no_carry_3d": lambda r: _add_no_carry(r, 3),
    "add/carry_3d": lambda r: _add_carry(r, 3),
    "sub/no_borrow": lambda r: _sub_no_borrow(r, 2),
    "sub/borrow": lambda r: _sub_borrow(r, 2),
    "sub/no_borrow_3d": lambda r: _sub_no_borrow(r, 3),
    "sub/borrow_3d": lambda r: _sub_borrow(r, 3),
    "add/no_carry_4d": lambda r: _add_no_carry(r, 4),
    "add/carry_4d": lambda r: _add_carry(r, 4),
    "sub/no_borrow_4d": lambda r: _sub_no_borrow(r, 4),
    "sub/borrow_4d": lambda r: _sub_borrow(r, 4),
    "mul/2x1": _mul_2x1,
    "mul/3x1": _mul_3x1,
    "cmp/3d": _compare,
}

DEFAULT_SKILLS = (
    "add/no_carry",
    "add/carry",
    "add/carry_3d",
    "sub/no_borrow",
    "sub/borrow",
    "sub/borrow_3d",
    "cmp/3d",
)


_PROBLEM = re.compile(r"(\d+)(\D)(\d+)=")


def _operand_digits(skill: str) -> int:
    """The longest operand a family writes (each family has fixed operand lengths)."""
    prompt, _ = FAMILIES[skill](np.random.default_rng(0))
    match = _PROBLEM.fullmatch(prompt)
    assert match is not None, prompt
    return max(len(match.group(1)), len(match.group(3)))


class ArithmeticTask:
    """Skill-labelled arithmetic, scored by exact match.

    Args:
        skills: leaf skills to include (keys of :data:`FAMILIES`).
        val_per_skill, test_per_skill: evaluation items per skill.
        split_seed: fixes the validation and test sets. It is separate from the
            episode seed on purpose: teachers compared over seeds must be
            scored on the same problems.
        answer_order: ``"lsd_first"`` (default) writes numeric answers least
            significant digit first (``457+168=`` -> ``526`` for 625), so the
            carry flows in the order the student generates digits, which a
            small student learns far faster (README, "The default task").
            Comparison answers (``<``, ``>``, ``=``) are unaffected.
        pad_operands: ``False`` (default) writes operands as they are
            (``47+85=``); ``True`` pads every operand with leading zeros to the
            longest operand of the chosen skills (``047+085=`` next to 3-digit
            skills). Padding puts each digit at the same distance from ``=`` in
            every skill, so the student need not first learn where the digits
            of operands of different lengths are. That removes much of the
            loss plateau all teachers share, and with it much of what a
            teacher can do for this student; the unpadded default keeps the
            length interference between 2- and 3-digit skills, where a
            curriculum matters.

    >>> task = ArithmeticTask(skills=["add/carry", "cmp/3d"], val_per_skill=3, test_per_skill=3)
    >>> [p.skill for p in task.problems("val")]
    ['add/carry', 'add/carry', 'add/carry', 'cmp/3d', 'cmp/3d', 'cmp/3d']
    >>> p = task.problems("test")[0]
    >>> task.score(p, p.answer), task.score(p, p.answer + "0")
    (True, False)
    """

    name = "arithmetic"
    alphabet = "0123456789+-*?<>="

    def __init__(
        self,
        skills: Sequence[str] = DEFAULT_SKILLS,
        val_per_skill: int = 128,
        test_per_skill: int = 128,
        split_seed: int = 1234,
        answer_order: str = "lsd_first",
        pad_operands: bool = False,
    ) -> None:
        if answer_order not in ("lsd_first", "msd_first"):
            raise ValueError(
                f"answer_order must be 'lsd_first' or 'msd_first', got {answer_order!r}"
            )
        self.answer_order = answer_order
        unknown = [s for s in skills if s not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown arithmetic skills {unknown}; known: {sorted(FAMILIES)}")
        if len(set(skills)) != len(skills) or not skills:
            raise ValueError(f"skills must be a non-empty list without repeats, got {skills}")
        if val_per_skill < 1 or test_per_skill < 1:
            raise ValueError("val_per_skill and test_per_skill must be >= 1")
        if not isinstance(pad_operands, bool):
            raise ValueError(f"pad_operands must be true or false, got {pad_operands!r}")
        self.pad_operands = pad_operands
        self._width = max(_operand_digits(skill) for skill in skills) if pad_operands else 0
        self._skills = SkillTree(skills)
        self._leaves = list(skills)
        rng = np.random.default_rng(split_seed)
        self._splits: dict[str, list[Problem]] = {"val": [], "test": []}
        for skill in skills:
            seen: set[str] = set()
            for split, n in (("val", val_per_skill), ("test", test_per_skill)):
                made = 0
                while made < n:
                    prompt, answer = self._make(skill, rng)
                    if prompt in seen:
                        continue
                    seen.add(prompt)
                    self._splits[split].append(
                        Problem(
                            id=f"{split}/{skill}/{made}", skill=skill, prompt=prompt, answer=answer
                        )
                    )
                    made += 1

    def _make(self, skill: str, rng: np.random.Generator) -> tuple[str, str]:
        prompt, answer = FAMILIES[skill](rng)
        if self._width:
            match = _PROBLEM.fullmatch(prompt)
            assert match is not None, prompt
            a, op, b = match.groups()
            prompt = f"{a.zfill(self._width)}{op}{b.zfill(self._width)}="
        return prompt, answer[::-1] if self.answer_order == "lsd_first" else answer

    @property
    def skills(self) -> SkillTree:
        return self._skills

    @property
    def leaf_skills(self) -> list[str]:
        return list(self._leaves)

    def problems(self, split: Split) -> list[Problem]:
        if split not in self._splits:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return list(self._splits[split])

    def score(self, problem: Problem, output: str) -> bool:
        return output.strip() == problem.answer

    def sample(self, skill: str, n: int, rng: np.random.Generator) -> list[Problem]:
        """``n`` fresh training problems of ``skill`` (may repeat evaluation items;
        the environment's decontamination filter drops those)."""
        if skill not in FAMILIES or skill not in self._leaves:
            raise ValueError(f"skill {skill!r} is not a leaf of this task: {self._leaves}")
        out = []
        for i in range(n):
            prompt, answer = self._make(skill, rng)
            out.append(Problem(id=f"train/{skill}/{i}", skill=skill, prompt=prompt, answer=answer))
        return out
