"""The arithmetic problem families: their vectorised samplers (:data:`FAMILIES`), the
result of a problem, and which family a problem belongs to.

What a family draws is fixed here; how a task writes its problems (operand
padding, digit order, mirror twins, noise skills) is
:class:`~teachgym.envs.tasks.arithmetic.ArithmeticTask`'s job.
:mod:`teachgym.envs.tasks.arithmetic` re-exports :data:`FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Operands = tuple[np.ndarray, np.ndarray]
#: A problem family draws ``n`` operand pairs at once (vectorized: a step asks
#: for thousands of problems, and drawing them one Python call at a time was
#: most of the generator's cost).
Family = Callable[[np.random.Generator, int], Operands]


def _value(digits: list[np.ndarray]) -> np.ndarray:
    """Digit arrays (most significant first) -> the numbers they spell."""
    out = np.zeros_like(digits[0])
    for d in digits:
        out = out * 10 + d
    return out


def has_carry(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Does ``x + y`` carry at any digit position?"""
    carry = np.zeros(x.shape, dtype=bool)
    while (x | y).any():
        carry |= x % 10 + y % 10 >= 10
        x, y = x // 10, y // 10
    return carry


def has_borrow(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Does ``x - y`` borrow at any digit position?"""
    borrow = np.zeros(x.shape, dtype=bool)
    while y.any():
        borrow |= x % 10 < y % 10
        x, y = x // 10, y // 10
    return borrow


def _until(rng: np.random.Generator, n: int, draw: Callable[[int], Operands]) -> Operands:
    """Rejection sampling, vectorized: draw batches until ``n`` pairs were kept."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    kept = 0
    while kept < n:
        x, y = draw(2 * (n - kept) + 16)
        xs.append(x)
        ys.append(y)
        kept += len(x)
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def _add_no_carry(rng: np.random.Generator, n: int, d: int) -> Operands:
    # Digit by digit: x_i uniform, then y_i uniform among digits that keep x_i + y_i < 10.
    xs, ys = [], []
    for i in range(d):
        lo = 1 if i == 0 else 0
        x = rng.integers(lo, 10 - lo, size=n)
        xs.append(x)
        ys.append(rng.integers(lo, 10 - x))
    return _value(xs), _value(ys)


def _add_carry(rng: np.random.Generator, n: int, d: int) -> Operands:
    def draw(m: int) -> Operands:
        x = rng.integers(10 ** (d - 1), 10**d, size=m)
        y = rng.integers(10 ** (d - 1), 10**d, size=m)
        keep = has_carry(x, y)
        return x[keep], y[keep]

    return _until(rng, n, draw)


def _sub_no_borrow(rng: np.random.Generator, n: int, d: int) -> Operands:
    # x's digits uniform; each digit of y uniform in [0, x_i] (the first in [1, x_0]).
    xs, ys = [], []
    for i in range(d):
        x = rng.integers(1 if i == 0 else 0, 10, size=n)
        xs.append(x)
        ys.append(rng.integers(1 if i == 0 else 0, x + 1))
    return _value(xs), _value(ys)


def _sub_borrow(rng: np.random.Generator, n: int, d: int) -> Operands:
    def draw(m: int) -> Operands:
        a = rng.integers(10 ** (d - 1), 10**d, size=m)
        b = rng.integers(10 ** (d - 1), 10**d, size=m)
        x, y = np.maximum(a, b), np.minimum(a, b)
        keep = has_borrow(x, y)
        return x[keep], y[keep]

    return _until(rng, n, draw)


def _mul(rng: np.random.Generator, n: int, d: int) -> Operands:
    return rng.integers(10 ** (d - 1), 10**d, size=n), rng.integers(2, 10, size=n)


def _compare(rng: np.random.Generator, n: int) -> Operands:
    # y shares the first ``keep`` digits of x (0-3) so the first digit alone rarely
    # decides; the rest of y's digits are uniform.
    x = rng.integers(100, 1000, size=n)
    keep = rng.integers(0, 4, size=n)
    digits = [x // 100, x // 10 % 10, x % 10]
    tail = [rng.integers(0, 10, size=n) for _ in range(3)]
    y = _value([np.where(keep > i, digits[i], tail[i]) for i in range(3)])
    return x, np.maximum(y, 100)


FAMILIES: dict[str, tuple[str, Family]] = {
    "add/no_carry": ("+", lambda r, n: _add_no_carry(r, n, 2)),
    "add/carry": ("+", lambda r, n: _add_carry(r, n, 2)),
    "add/no_carry_3d": ("+", lambda r, n: _add_no_carry(r, n, 3)),
    "add/carry_3d": ("+", lambda r, n: _add_carry(r, n, 3)),
    "sub/no_borrow": ("-", lambda r, n: _sub_no_borrow(r, n, 2)),
    "sub/borrow": ("-", lambda r, n: _sub_borrow(r, n, 2)),
    "sub/no_borrow_3d": ("-", lambda r, n: _sub_no_borrow(r, n, 3)),
    "sub/borrow_3d": ("-", lambda r, n: _sub_borrow(r, n, 3)),
    "add/no_carry_4d": ("+", lambda r, n: _add_no_carry(r, n, 4)),
    "add/carry_4d": ("+", lambda r, n: _add_carry(r, n, 4)),
    "sub/no_borrow_4d": ("-", lambda r, n: _sub_no_borrow(r, n, 4)),
    "sub/borrow_4d": ("-", lambda r, n: _sub_borrow(r, n, 4)),
    "mul/2x1": ("*", lambda r, n: _mul(r, n, 2)),
    "mul/3x1": ("*", lambda r, n: _mul(r, n, 3)),
    "cmp/3d": ("?", _compare),
}


def result_of(op: str, x: int, y: int) -> str:
    """The answer to ``x op y``: the number, most significant digit first, or for a
    comparison (``?``) one of ``<``, ``>``, ``=``."""
    if op == "+":
        return str(x + y)
    if op == "-":
        return str(x - y)
    if op == "*":
        return str(x * y)
    return "<" if x < y else ">" if x > y else "="


def family_of(op: str, x: int, y: int) -> str | None:
    """The family of :data:`FAMILIES` whose sampler can draw ``x op y``, or ``None``.

    Mirrors the samplers: additions and subtractions have two operands of the
    same length (2 to 4 digits, no leading zero) and are split by whether a
    carry or borrow occurs; subtraction never goes below zero; multiplication
    is a 2- or 3-digit number times 2..9; comparison is two 3-digit numbers.
    """
    dx, dy = len(str(x)), len(str(y))
    if op == "?":
        return "cmp/3d" if dx == dy == 3 else None
    if op == "*":
        return f"mul/{dx}x1" if dx in (2, 3) and 2 <= y <= 9 else None
    if dx != dy or dx not in (2, 3, 4):
        return None
    size = "" if dx == 2 else f"_{dx}d"
    xs, ys = np.array([x]), np.array([y])
    if op == "+":
        return f"add/{'carry' if has_carry(xs, ys)[0] else 'no_carry'}{size}"
    if x < y:
        return None
    return f"sub/{'borrow' if has_borrow(xs, ys)[0] else 'no_borrow'}{size}"


def operand_digits(skill: str) -> int:
    """The longest operand a family writes (each family has fixed operand lengths)."""
    x, y = FAMILIES[skill][1](np.random.default_rng(0), 1)
    return max(len(str(int(x[0]))), len(str(int(y[0]))))


def answer_length(skill: str) -> int:
    """The longest answer a family can have: its largest operands' result."""
    op, _ = FAMILIES[skill]
    if op == "?":
        return 1
    d = operand_digits(skill)
    top = 10**d - 1
    return len(result_of(op, top, 9 if op == "*" else top if op == "+" else 0))
