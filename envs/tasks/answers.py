"""Reading final answers out of free text, and deciding whether two of them are equal.

Shared by the ``gsm8k`` and ``math`` tasks (and usable by a generator that
compares two samples). Everything here is pure and bounded: scoring runs on
thousands of model outputs per evaluation, and an output is untrusted text, so
no function evaluates it as code, and symbolic comparison only runs on short
inputs built from a small LaTeX subset, with guards that keep sympy away from
huge powers (see :func:`math_equal`).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

import sympy
from sympy.parsing.sympy_parser import (
    auto_number,
    auto_symbol,
    implicit_multiplication,
    parse_expr,
    rationalize,
    split_symbols,
)

__all__ = [
    "extract_boxed",
    "extract_final_number",
    "math_equal",
    "normalize_math_answer",
    "numbers_equal",
    "parse_number",
]

#: Longest answer string :func:`math_equal` hands to sympy; longer ones only compare as strings.
MAX_SYMBOLIC_CHARS = 160

# A number as people write it: optional sign (a minus that follows a word character or a
# closing bracket is an operator, as in GSM8K's ``16-3-4``), thousands separated by commas
# or not, an optional decimal part. ``$`` between the sign and the digits is allowed.
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}.])(?P<sign>-)\s?\$?)?(?<![\d.])"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]\d)|\d+(?:\.\d+)?|\.\d+)(?!\d)"
)
_FRACTION = re.compile(r"(?<![\d.])(-?)(\d+)\s*/\s*(\d+)(?![\d.])")
_MARKER = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*([^\n]*)", re.IGNORECASE)


def _canonical(sign: str, num: str) -> str:
    """``"-"``, ``"1,234.50"`` -> ``"-1234.5"``: one spelling per number."""
    num = num.replace(",", "")
    if num.startswith("."):
        num = "0" + num
    if "." in num:
        num = num.rstrip("0").rstrip(".")
    num = num.lstrip("0") or "0"
    if num.startswith("."):
        num = "0" + num
    return "-" + num if sign and num != "0" else num


def _first_number(segment: str) -> str | None:
    """The first number in ``segment`` (a fraction ``a/b`` counts as one), canonical."""
    segment = segment.replace("{,}", ",").replace("\\!", "").replace("\\$", "$")
    frac = re.search(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", segment)
    m = _NUMBER.search(segment)
    f = _FRACTION.search(segment)
    if frac and (m is None or frac.start() <= m.start()):
        return f"{frac.group(1)}/{frac.group(2)}"
    if f and m and f.start() <= m.start() + (1 if m.group("sign") else 0):
        return f"{f.group(1)}{f.group(2)}/{f.group(3)}"
    return _canonical(m.group("sign") or "", m.group("num")) if m else None


def extract_final_number(text: str) -> str | None:
    """The final numeric answer of a GSM8K-style solution, canonical, or ``None``.

    Looked for in order: the last ``#### n`` marker, the last ``\\boxed{n}``,
    the last "the answer is n" (also "answer: n"), else the last number in the
    text. Within the chosen place the first number is taken, so units and
    currency around it do not matter (``$18``, ``18 dollars``, ``5 cm``).
    Commas between thousands are dropped (``1,234`` -> ``1234``), trailing
    zeros of decimals too (``18.00`` -> ``18``), a sentence's final period is
    not a decimal point. A percent is read as its number (``50%`` -> ``50``):
    GSM8K writes percent answers as the bare number. A fraction ``a/b`` (or
    ``\\frac{a}{b}``) in the chosen place is kept as ``"a/b"``, which
    :func:`numbers_equal` understands.

    >>> extract_final_number("She makes 9 * 2 = $18 every day.\\n#### 18")
    '18'
    >>> extract_final_number("So the total is $1,234.50."), extract_final_number("no digits")
    ('1234.5', None)
    """
    if not text:
        return None
    markers = _MARKER.findall(text)
    if markers:
        n = _first_number(markers[-1])
        if n is not None:
            return n
    boxed = extract_boxed(text)
    if boxed is not None:
        n = _first_number(boxed)
        if n is not None:
            return n
    said = _ANSWER_IS.findall(text)
    if said:
        n = _first_number(said[-1])
        if n is not None:
            return n
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    return _canonical(last.group("sign") or "", last.group("num")) if last else None


def parse_number(text: str) -> Fraction | None:
    """``"1,234"``, ``"-2.5"``, ``"$18"``, ``"3/4"``, ``"50%"`` -> an exact Fraction; else None."""
    s = text.strip().replace(",", "").replace("$", "").replace("\\%", "").rstrip("%").strip()
    if not s or len(s) > 64:
        return None
    try:
        if "/" in s:
            num, _, den = s.partition("/")
            return Fraction(int(num.strip()), int(den.strip()))
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: str | None, b: str | None, rel_tol: float = 1e-6) -> bool:
    """Do two numbers (as :func:`parse_number` reads them) have the same value?

    Exact for integers and fractions (``18.00`` == ``18``, ``0.5`` == ``1/2``);
    a relative tolerance of ``rel_tol`` covers a float answer printed with
    fewer digits than another. ``False`` when either side is not a number.
    """
    if a is None or b is None:
        return False
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    if x == y:
        return True
    return math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=1e-12)


def extract_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, or ``None``.

    Braces are balanced, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``;
    ``\\boxed 5`` (no braces) gives ``5``. An unclosed box gives ``None``.

    >>> extract_boxed(r"so $\\boxed{\\frac{1}{2}}$."), extract_boxed(r"\\boxed{2} then \\fbox{3}")
    ('\\\\frac{1}{2}', '3')
    """
    if not text:
        return None
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if text.startswith(" ", i) and not text[i:].lstrip().startswith("{"):
        m = re.match(r"\s+([^\s$]+)", text[i:])
        return m.group(1) if m else None
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


# -- normalisation ---------------------------------------------------------------------------

_UNIT_WORDS = (
    "units?|cm|centimeters?|mm|millimeters?|km|kilometers?|m|meters?|inch(?:es)?|in|feet|foot|"
    "ft|yards?|miles?|mph|degrees?|dollars?|cents?|seconds?|minutes?|hours?|days?|weeks?|"
    "years?|sq|square|cubic|pounds?|lbs?|ounces?|grams?|kg|liters?|gallons?"
)
_TEXT_CMD = r"\\(?:text|textbf|textrm|mbox|mathrm|mathbf|rm)\s*"
_TRAILING_UNIT = re.compile(r"(?<=\S)\s*" + _TEXT_CMD + r"\{\s*[^{}]*\}(?:\^\{?\d\}?)?\s*$")
_BARE_UNIT = re.compile(r"(?<=[\d}])\s*(?:" + _UNIT_WORDS + r")(?:\^\{?\d\}?)?\s*$")


def _fix_shorthand(s: str, cmd: str, args: int) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}``: single-character
    arguments written without braces get them, so both spellings compare equal."""
    out: list[str] = []
    i = 0
    while True:
        j = s.find(cmd, i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        k = j + len(cmd)
        if k < len(s) and s[k].isalpha():  # \fracx? no: a longer command such as \fracture
            out.append(s[i:k])
            i = k
            continue
        out.append(s[i:k])
        for _ in range(args):
            if k < len(s) and s[k] == "{":
                depth, m = 0, k
                while m < len(s):
                    depth += {"{": 1, "}": -1}.get(s[m], 0)
                    m += 1
                    if depth == 0:
                        break
                out.append(s[k:m])
                k = m
            elif k < len(s) and s[k] not in "\\[":
                out.append("{" + s[k] + "}")
                k += 1
        i = k


def normalize_math_answer(s: str) -> str:
    """One spelling for a MATH answer, so equal answers usually compare equal as strings.

    Drops what does not change the value: ``$``, spaces, ``\\left``/``\\right``,
    spacing commands (``\\!``, ``\\,``, ``\\;``, ``\\quad``), ``\\displaystyle``,
    degrees (``^\\circ``), percent signs, a trailing period, a trailing unit
    (``\\text{ cm}``, ``\\mbox{inches}^2``, a bare ``5 cm``), a leading
    ``x =`` (one variable, one ``=``), thousands commas in a plain number.
    Unifies ``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\frac12`` ->
    ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``, ``.5`` -> ``0.5``, and
    unwraps ``\\text{...}`` that is the answer itself (``\\text{(C)}`` ->
    ``(C)``).

    >>> normalize_math_answer(r"\\left( \\dfrac12, 3 \\right)")
    '(\\\\frac{1}{2},3)'
    >>> normalize_math_answer(r"x = 5\\text{ cm}."), normalize_math_answer(r"90^\\circ")
    ('5', '90')
    """
    s = s.strip()
    if len(s) > 4 * MAX_SYMBOLIC_CHARS:
        return s
    s = s.replace("\n", " ").replace("\\$", "").replace("$", "")
    s = s.replace("\\displaystyle", "").replace("\\\\", " ")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])\s*", "", s)
    s = re.sub(r"\\(?:big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[!,;:> ]|\\q?quad(?![a-zA-Z])|~", " ", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = s.strip().rstrip(".").strip()
    for _ in range(2):
        s = _TRAILING_UNIT.sub("", s).strip()
    s = re.sub(_TEXT_CMD + r"\{([^{}]*)\}", r"\1", s)
    s = _BARE_UNIT.sub("", s).strip()
    m = re.match(r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)\s*=\s*(.+)$", s)
    if m and "=" not in m.group(1):
        s = m.group(1)
    s = re.sub(r"\s+", "", s)
    s = _fix_shorthand(s, "\\frac", 2)
    s = _fix_shorthand(s, "\\sqrt", 1)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    s = s.rstrip(".")
    return s


# -- symbolic equality -----------------------------------------------------------------------

_FUNCS = {"\\sin": "sin", "\\cos": "cos", "\\tan": "tan", "\\ln": "log", "\\log": "log"}
_SAFE_CHARS = re.compile(r"^[0-9a-zA-Z+\-*/()., ]*$")
#: Commands that stand for one token of the expression.
_TOKENS = {"\\cdot": "*", "\\times": "*", "\\div": "/", "\\pi": " pi ", "\\infty": " oo "}


def _braced(s: str, i: int) -> tuple[str, int] | None:
    """The brace group starting at ``s[i] == "{"``: (inside, index after it)."""
    if i >= len(s) or s[i] != "{":
        return None
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1 : j], j + 1
    return None


def _latex_to_expr(s: str) -> str | None:
    """A normalised LaTeX answer -> a Python-syntax expression over a small vocabulary.

    Only ``\\frac``, ``\\sqrt`` (with an optional index), ``^``, ``\\cdot``,
    ``\\times``, ``\\div``, ``\\pi``, ``\\infty``, ``\\sin``-style functions,
    digits, single-letter variables and brackets get through; anything else
    (another command, ``_``, ``!``, ``=``) gives ``None``.
    """
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            command = _command_to_expr(s, i)
            if command is None:
                return None
            piece, i = command
            out.append(piece)
        elif c == "^":
            out.append("**")
            i += 1
            if i < len(s) and s[i] != "{":
                out.append(f"({s[i]})" if s[i].isalnum() else s[i])
                i += 1
        elif c in "{}":
            out.append("(" if c == "{" else ")")
            i += 1
        else:
            out.append(c)
            i += 1
    expr = "".join(out)
    if not _SAFE_CHARS.match(expr) or re.search(r"(?<!\d)\.|\.(?!\d)", expr):
        return None
    return expr


def _command_to_expr(s: str, i: int) -> tuple[str, int] | None:
    """The command starting at ``s[i] == "\\"`` (with its arguments) as an expression:
    (expression, index after it), or ``None`` for a command outside the vocabulary of
    :func:`_latex_to_expr` or one whose arguments do not convert."""
    m = re.match(r"\\[a-zA-Z]+", s[i:])
    if m is None:
        return None
    cmd = m.group(0)
    i += len(cmd)
    if cmd == "\\frac":
        return _frac_to_expr(s, i)
    if cmd == "\\sqrt":
        return _sqrt_to_expr(s, i)
    if cmd in _TOKENS:
        return _TOKENS[cmd], i
    if cmd in _FUNCS:
        return f" {_FUNCS[cmd]}", i
    return None


def _frac_to_expr(s: str, i: int) -> tuple[str, int] | None:
    """``\\frac{a}{b}`` whose arguments start at ``s[i]``: (expression, index after it)."""
    num = _braced(s, i)
    den = _braced(s, num[1]) if num else None
    if num is None or den is None:
        return None
    a, b = _latex_to_expr(num[0]), _latex_to_expr(den[0])
    if a is None or b is None:
        return None
    return f"(({a})/({b}))", den[1]


def _sqrt_to_expr(s: str, i: int) -> tuple[str, int] | None:
    """``\\sqrt[n]{x}`` (the index optional, 2 without it) whose arguments start at
    ``s[i]``: (expression, index after it)."""
    index = "2"
    if i < len(s) and s[i] == "[":
        close = s.find("]", i)
        if close < 0:
            return None
        idx = _latex_to_expr(s[i + 1 : close])
        if idx is None:
            return None
        index, i = idx, close + 1
    arg = _braced(s, i)
    if arg is None:
        return None
    inner = _latex_to_expr(arg[0])
    if inner is None:
        return None
    return f"(({inner})**(1/({index})))", arg[1]


def _too_big(expr: Any) -> bool:
    """Would evaluating this (unevaluated) expression build a huge number?

    A power tower (a power in an exponent) or an exponent over 1000 is
    refused: ``9^{9^{9}}`` would otherwise keep sympy busy for ever.
    """
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow):
            exp = node.args[1]
            for inner in sympy.preorder_traversal(exp):
                # ``1/2`` arrives as ``Pow(2, -1)``: a power with an exponent of size <= 1
                # cannot grow a tower; any other power inside an exponent is refused.
                if isinstance(inner, sympy.Pow) and not (
                    inner.exp.is_Number and abs(inner.exp) <= 1
                ):
                    return True
            for atom in exp.atoms(sympy.Number):
                if abs(atom) > 1000:
                    return True
        if isinstance(node, sympy.Integer) and abs(node) > 10**30:
            return True
    return False


def _to_sympy(s: str) -> Any | None:
    """A sympy expression for a normalised answer, or ``None`` when it is outside the subset."""
    if len(s) > MAX_SYMBOLIC_CHARS:
        return None
    text = _latex_to_expr(s)
    if text is None or not text.strip():
        return None
    try:
        names: dict[str, Any] = {
            "pi": sympy.pi,
            "oo": sympy.oo,
            "e": sympy.E,
            "i": sympy.I,
            "sqrt": sympy.sqrt,
            "sin": sympy.sin,
            "cos": sympy.cos,
            "tan": sympy.tan,
            "log": sympy.log,
        }
        glob: dict[str, Any] = {
            "__builtins__": {},
            "Integer": sympy.Integer,
            "Float": sympy.Float,
            "Rational": sympy.Rational,
            "Symbol": sympy.Symbol,
            "Add": sympy.Add,
            "Mul": sympy.Mul,
            "Pow": sympy.Pow,
        }
        steps = (auto_symbol, auto_number, rationalize, split_symbols, implicit_multiplication)
        raw = parse_expr(
            text, local_dict=dict(names), global_dict=glob, transformations=steps, evaluate=False
        )
        if _too_big(raw):
            return None
        return parse_expr(text, local_dict=dict(names), global_dict=glob, transformations=steps)
    except Exception:  # untrusted text: any failure means "cannot compare"
        return None


def _scalar_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    x, y = parse_number(a), parse_number(b)
    if x is not None and y is not None:
        return x == y or math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12)
    ea, eb = _to_sympy(a), _to_sympy(b)
    if ea is None or eb is None:
        return False
    try:
        if ea == eb:
            return True
        if ea.free_symbols != eb.free_symbols:
            return False
        if ea.has(sympy.oo, -sympy.oo, sympy.zoo) or eb.has(sympy.oo, -sympy.oo, sympy.zoo):
            return False
        diff = ea - eb
        if diff.is_Rational:  # both exact numbers: no tolerance (10^{1000} != 10^{1000}+1)
            return bool(diff == 0)
        if not diff.free_symbols:
            value = complex(sympy.N(diff, 30))
            scale = max(1.0, abs(complex(sympy.N(ea, 30))))
            return abs(value) <= 1e-9 * scale
        return bool(sympy.simplify(diff) == 0)
    except Exception:  # untrusted text: any failure means "not shown equal"
        return False


def _split_top(s: str, sep: str) -> list[str]:
    """``s`` split at ``sep`` where no bracket is open."""
    parts: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _bracketed(s: str) -> tuple[str, list[str], str] | None:
    """``"(1,2]"`` -> ``("(", ["1", "2"], "]")`` when the outer brackets enclose it all."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    depth = 0
    for k, c in enumerate(s):
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        if depth == 0 and k < len(s) - 1:
            return None
    inner = s[1:-1]
    return s[0], _split_top(inner, ","), s[-1]


def _equal_normalized(a: str, b: str) -> bool:
    if a == b:
        return True
    ua, ub = _split_top(a, "\\cup"), _split_top(b, "\\cup")
    if len(ua) > 1 or len(ub) > 1:
        return len(ua) == len(ub) and all(
            _equal_normalized(x, y) for x, y in zip(ua, ub, strict=True)
        )
    ba, bb = _bracketed(a), _bracketed(b)
    if ba is not None and bb is not None and (len(ba[1]) > 1 or len(bb[1]) > 1):
        return (
            ba[0] == bb[0]
            and ba[2] == bb[2]
            and len(ba[1]) == len(bb[1])
            and all(_scalar_equal(x, y) for x, y in zip(ba[1], bb[1], strict=True))
        )
    la, lb = _split_top(a, ","), _split_top(b, ",")
    if len(la) > 1 or len(lb) > 1:
        if len(la) != len(lb):
            return False
        rest = list(lb)
        for x in la:
            hit = next((k for k, y in enumerate(rest) if _scalar_equal(x, y)), None)
            if hit is None:
                return False
            rest.pop(hit)
        return True
    return _scalar_equal(a, b)


def math_equal(a: str | None, b: str | None) -> bool:
    """Are two MATH answers the same? String equality after :func:`normalize_math_answer`,
    else value equality.

    Values: plain numbers compare exactly (``0.5`` == ``\\frac12`` == ``1/2``);
    other answers in the supported LaTeX subset are compared with sympy
    (``\\sqrt{8}`` == ``2\\sqrt{2}``, ``\\frac{x+1}{2}`` == ``\\frac{x}{2}+\\frac12``).
    Tuples and intervals compare element by element with the same brackets
    (``(1,2)`` != ``(2,1)``, ``(1,2]`` != ``(1,2)``); unions of intervals piece
    by piece; a bare comma list (``1, -2``: a list of solutions) compares as
    a multiset, in any order. Answers longer than :data:`MAX_SYMBOLIC_CHARS`
    compare only as strings; any parse failure means not equal.

    >>> math_equal("0.5", r"\\frac12"), math_equal(r"\\sqrt{8}", r"2\\sqrt{2}")
    (True, True)
    >>> math_equal("(1,2)", "(2,1)")
    False
    """
    if a is None or b is None:
        return False
    na, nb = normalize_math_answer(a), normalize_math_answer(b)
    if not na or not nb:
        return False
    return _equal_normalized(na, nb)
