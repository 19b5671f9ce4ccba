"""Which generated tests test something: a HumanEval ``check(candidate)`` whose asserts use
the candidate (:func:`has_tests`) and can fail (:func:`vacuous_assert`).

:meth:`~teachgym.envs.tasks.code.CodeTask.verify` refuses a training example whose
tests fail either check, since such tests pass any answer;
:mod:`teachgym.envs.tasks.code` re-exports :func:`vacuous_assert`.
"""

from __future__ import annotations

import ast


def _check_function(test: str) -> tuple[ast.FunctionDef, str] | None:
    """The ``def check(candidate)`` of ``test`` and its parameter's name."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check" and node.args.args:
            return node, node.args.args[0].arg
    return None


def _asserts_on(test: str) -> tuple[list[ast.Assert], str]:
    """The asserts of ``check`` that mention its parameter, and that parameter's name."""
    found = _check_function(test)
    if found is None:
        return [], ""
    node, param = found
    asserts = [
        stmt
        for stmt in ast.walk(node)
        if isinstance(stmt, ast.Assert)
        and any(isinstance(n, ast.Name) and n.id == param for n in ast.walk(stmt))
    ]
    return asserts, param


def has_tests(test: str) -> bool:
    """Does ``test`` define ``check(candidate)`` with an ``assert`` that uses the candidate?

    A ``check`` that asserts nothing, or never calls the function it is
    given, passes any answer, so an example carrying it is unverified.
    """
    return bool(_asserts_on(test)[0])


_REFLEXIVE = (ast.Eq, ast.Is, ast.LtE, ast.GtE)


def _self_comparison(e: ast.expr) -> bool:
    """``x == x`` (or ``is``, ``<=``, ``>=``): both sides the same expression."""
    return (
        isinstance(e, ast.Compare)
        and len(e.ops) == 1
        and isinstance(e.ops[0], _REFLEXIVE)
        and ast.dump(e.left) == ast.dump(e.comparators[0])
    )


def _always_true(e: ast.expr, param: str) -> bool:
    """Is ``e`` true whatever the candidate does? (As far as the source shows.)"""
    if isinstance(e, ast.Constant):
        return bool(e.value)
    if isinstance(e, (ast.Name, ast.Lambda)):
        return isinstance(e, ast.Lambda) or e.id == param  # a function is always truthy
    if isinstance(e, ast.JoinedStr):
        return any(isinstance(v, ast.Constant) and v.value for v in e.values)
    if isinstance(e, (ast.Tuple, ast.List, ast.Set)):
        return bool(e.elts)
    if isinstance(e, ast.Dict):
        return bool(e.keys)
    if isinstance(e, ast.BoolOp):
        parts = [_always_true(v, param) for v in e.values]
        return any(parts) if isinstance(e.op, ast.Or) else all(parts)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
        return _always_false(e.operand, param)
    if isinstance(e, ast.IfExp):
        return _always_true(e.body, param) and _always_true(e.orelse, param)
    if isinstance(e, ast.NamedExpr):
        return _always_true(e.value, param)
    if _self_comparison(e):
        return True
    if isinstance(e, ast.Compare) and len(e.ops) == 1:  # candidate is not None / != None
        left, right = e.left, e.comparators[0]
        return (
            isinstance(e.ops[0], (ast.IsNot, ast.NotEq))
            and isinstance(left, ast.Name)
            and left.id == param
            and isinstance(right, ast.Constant)
            and right.value is None
        )
    if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id == "callable":
        return len(e.args) == 1 and isinstance(e.args[0], ast.Name) and e.args[0].id == param
    return False


def _always_false(e: ast.expr, param: str) -> bool:
    if isinstance(e, ast.Constant):
        return not e.value
    if isinstance(e, (ast.Tuple, ast.List, ast.Set)):
        return not e.elts
    if isinstance(e, ast.Dict):
        return not e.keys
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
        return _always_true(e.operand, param)
    if isinstance(e, ast.BoolOp):
        parts = [_always_false(v, param) for v in e.values]
        return any(parts) if isinstance(e.op, ast.And) else all(parts)
    return False


def vacuous_assert(test: str) -> str | None:
    """Why an assert of ``check`` on the candidate cannot fail, or None.

    ``"self_comparison"``: it compares an expression with itself
    (``assert candidate(3) == candidate(3)``); ``"always_true"``: it holds
    whatever the candidate does (``assert candidate or ...``, ``assert
    candidate is not None``, ``assert (candidate(1), 2)``). Asserts that do
    not mention the candidate (HumanEval's ``assert True, "..."``) are left
    alone: they test nothing, but they claim nothing either.

    >>> vacuous_assert("def check(c):\\n    assert c(3) == c(3)\\n")
    'self_comparison'
    >>> vacuous_assert("def check(c):\\n    assert c(1) == 2 or c\\n")
    'always_true'
    >>> vacuous_assert("def check(c):\\n    assert c(1) == 2\\n    assert True, 'x'\\n") is None
    True
    """
    asserts, param = _asserts_on(test)
    for stmt in asserts:
        if _self_comparison(stmt.test):
            return "self_comparison"
        if _always_true(stmt.test, param):
            return "always_true"
    return None
