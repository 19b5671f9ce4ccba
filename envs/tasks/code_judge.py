"""The two programs that judge one output, each run in its own sandbox and joined by two
pipes (why two: see :mod:`teachgym.envs.tasks.code`).

:func:`_server_program` is the candidate's process: it defines the function
and answers each call with plain data. :func:`_client_program` is the tests'
process: it runs ``check`` on a stand-in that sends each call to the other
process and rebuilds the answer, and prints a random marker (:func:`_new_marker`)
only when ``check`` returned with the protocol kept (:func:`_marked`). Both
share :data:`_CODEC`, the wire format of plain data.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from teachgym.sandbox import SandboxResult

#: Plain data on the wire (both programs): JSON with every array tagged, so that
#: types survive exactly (tuple vs list, int vs float vs bool, set, bytes...).
#: A value of any other type, a subclass included, is not plain.
_CODEC = r"""
try:  # json's C parts, without the json package (its import costs the sandbox; docs/decisions.md)
    from _json import encode_basestring_ascii as _quote, make_scanner as _make_scanner
except ImportError:  # not CPython
    from json.encoder import encode_basestring_ascii as _quote
    from json.scanner import make_scanner as _make_scanner

_INF = float("inf")


class _NotPlain(Exception):
    pass


class _Context:  # what json's C scanner reads from json.JSONDecoder
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"NaN": _INF - _INF, "Infinity": _INF, "-Infinity": -_INF}.__getitem__


_scan = _make_scanner(_Context())


def _loads(data):
    text = data.decode()
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if text[end:].strip():
        raise ValueError("more than one JSON value")
    return value


def _dumps(n):
    t = type(n)
    if t is str:
        return _quote(n)
    if n is None or t is bool:
        return "null" if n is None else "true" if n else "false"
    if t is int:
        return int.__repr__(n)
    if t is float:
        if n != n or n in (_INF, -_INF):
            return "NaN" if n != n else "Infinity" if n > 0 else "-Infinity"
        return float.__repr__(n)
    if t is list:
        return "[" + ",".join([_dumps(x) for x in n]) + "]"
    raise _NotPlain("a %s" % t.__name__)


_DEPTH = 100
_MUTABLE = (list, dict, set, bytearray)
_TAGS = {list: "l", tuple: "t", set: "s", frozenset: "f"}
_TYPES = {"l": list, "t": tuple, "s": set, "f": frozenset}


def _enc(v, d=0):
    t = type(v)
    if v is None or t is bool or t is str or t is float:
        return v
    if t is int:
        return v if -(1 << 62) < v < (1 << 62) else ["x", format(v, "x")]
    if d >= _DEPTH:
        raise _NotPlain("nested deeper than %d" % _DEPTH)
    if t in _TAGS:
        return [_TAGS[t]] + [_enc(x, d + 1) for x in v]
    if t is dict:
        out = ["d"]
        for k, x in v.items():
            out += [_enc(k, d + 1), _enc(x, d + 1)]
        return out
    if t is bytes or t is bytearray:
        return ["b" if t is bytes else "B", v.hex()]
    if t is complex:
        return ["c", v.real, v.imag]
    raise _NotPlain("a %s" % t.__name__)


def _dec(n, d=0):
    t = type(n)
    if n is None or t is bool or t is str or t is float or t is int:
        return n
    if t is not list or not n or d >= _DEPTH or type(n[0]) is not str:
        raise ValueError("not an encoded value")
    tag, rest = n[0], n[1:]
    if tag in _TYPES:
        return _TYPES[tag]([_dec(x, d + 1) for x in rest])
    if tag == "d" and len(rest) % 2 == 0:
        items = [_dec(x, d + 1) for x in rest]
        return dict(zip(items[::2], items[1::2]))
    if tag in ("x", "b", "B") and len(rest) == 1 and type(rest[0]) is str:
        if tag == "x":
            return int(rest[0], 16)
        return (bytes if tag == "b" else bytearray).fromhex(rest[0])
    if tag == "c" and len(rest) == 2 and all(type(x) in (int, float) for x in rest):
        return complex(rest[0], rest[1])
    raise ValueError("not an encoded value")
"""

#: The candidate's process: defines the function from the completion, then for
#: each request (the arguments of one call) answers with the return value and
#: the final state of its mutable arguments, or the exception raised, or
#: ``bad`` when the value is not plain data. Everything here is within the
#: completion's reach, and that is fine: all it can change is what it answers.
_SERVER = (
    _CODEC
    + r"""
import builtins as _builtins
import os as _os
import sys as _sys


def _serve(source, entry):
    reader = _os.fdopen(int(_sys.argv[1]), "rb")
    writer = _os.fdopen(int(_sys.argv[2]), "wb")
    ns = {"__name__": "__main__", "__builtins__": _builtins}
    exec(compile(source, "solution.py", "exec"), ns)
    fn = ns[entry]
    for line in reader:
        args, kwargs = _loads(line)
        args = [_dec(a) for a in args]
        kwargs = {k: _dec(v) for k, v in kwargs}
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:
            try:
                message = str(e)[:500]
            except BaseException:
                message = "?"
            reply = ["raise", type(e).__name__, message]
        else:
            try:
                after = [_enc(a) if type(a) in _MUTABLE else None for a in args]
                reply = ["ok", _enc(value), after]
            except (_NotPlain, RecursionError, ValueError) as e:
                reply = ["bad", str(e)[:200]]
        writer.write(_dumps(reply).encode() + b"\n")
        writer.flush()
"""
)

#: The tests' process: the prompt (for its helpers), the tests, and ``check``
#: called with a stand-in that asks the candidate's process for every call and
#: rebuilds the answer from plain data. No code of the completion ever runs
#: here. ``sys.argv[1:]`` is the pipe pair, or ``none`` / ``raise`` for a
#: trivially wrong candidate (returns None / raises) that needs no process.
#: The marker is printed only when ``check`` returned and the candidate's
#: process kept to the protocol throughout.
_CLIENT = (
    _CODEC
    + r"""
import builtins as _builtins
import os as _os
import sys as _sys


class CandidateBroke(BaseException):
    "The candidate's process answered outside the protocol, or not at all."


class CandidateError(Exception):
    "The candidate raised an exception that is not a built-in one."


_LIMIT = 16 << 20


def _exception(name, message):
    cls = getattr(_builtins, name, None) if type(name) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(str(message)[:500])
        except Exception:
            pass
    return CandidateError("%s: %s" % (str(name)[:100], str(message)[:500]))


def _main(prompt, test, entry, marker):
    broken = []
    mode = _sys.argv[1] if len(_sys.argv) == 2 else "pipe"
    if mode == "pipe":
        reader = _os.fdopen(int(_sys.argv[1]), "rb")
        writer = _os.fdopen(int(_sys.argv[2]), "wb")

    def breach(why):
        broken.append(why)
        raise CandidateBroke(why)

    def candidate(*args, **kwargs):
        if broken:
            raise CandidateBroke(broken[0])
        if mode == "none":
            return None
        if mode == "raise":
            raise RuntimeError("a trivially wrong candidate, which always raises")
        try:
            request = [[_enc(a) for a in args], [[k, _enc(v)] for k, v in kwargs.items()]]
            request = _dumps(request).encode() + b"\n"
        except (_NotPlain, RecursionError, ValueError) as e:
            breach("the tests pass the candidate a value that is not plain data (%s)" % e)
        try:
            writer.write(request)
            writer.flush()
            line = reader.readline(_LIMIT)
        except OSError as e:
            breach("the candidate's process is gone (%s)" % e)
        if not line.endswith(b"\n"):
            breach("an answer over %d bytes" % _LIMIT if line else "no answer (it ended)")
        error = None
        try:
            reply = _loads(line)
            kind = reply[0]
            if kind == "ok" and len(reply) == 3 and len(reply[2]) == len(args):
                value = _dec(reply[1])
                for arg, after in zip(args, reply[2]):
                    if after is None or type(arg) not in _MUTABLE:
                        continue
                    after = _dec(after)
                    if type(after) is not type(arg):
                        raise ValueError("a mutated argument changed type")
                    if type(arg) in (list, bytearray):
                        arg[:] = after
                    else:
                        arg.clear()
                        arg.update(after)
                return value
            if kind == "raise" and len(reply) == 3:
                error = _exception(reply[1], reply[2])
        except (ValueError, TypeError, IndexError, KeyError, RecursionError) as e:
            breach("a malformed answer (%s: %s)" % (type(e).__name__, e))
        if error is None:
            breach("the candidate returned something that is not plain data (%r)" % reply[1:2])
        raise error

    ns = {"__name__": "__main__", "__builtins__": _builtins}
    exec(compile(prompt, "prompt.py", "exec"), ns)
    stub = ns.get(entry)
    candidate.__name__ = candidate.__qualname__ = entry
    candidate.__doc__ = getattr(stub, "__doc__", None)
    ns[entry] = candidate
    exec(compile(test, "test.py", "exec"), ns)
    ns["check"](candidate)
    if broken:
        _sys.stderr.write("the candidate's process broke the protocol: %s\n" % broken[0])
        _sys.exit(1)
    _sys.stdout.flush()
    print(marker)
"""
)


def _server_program(source: str, entry_point: str) -> str:
    return f"{_SERVER}\n_serve({source!r}, {entry_point!r})\n"


def _client_program(prompt: str, test: str, entry_point: str, marker: str) -> str:
    return f"{_CLIENT}\n_main({prompt!r}, {test!r}, {entry_point!r}, {marker!r})\n"


def _marked(result: SandboxResult, marker: str) -> bool:
    """Exit status 0, and the marker as the last line: ``check`` returned, protocol kept."""
    return result.passed and result.stdout.splitlines()[-1:] == [marker]


def _new_marker() -> str:
    return f"teachgym-passed-{secrets.token_hex(16)}"


@dataclass(frozen=True)
class _Job:
    """One judging: the candidate's module, and the prompt and tests it is checked by."""

    source: str
    prompt: str
    test: str
    entry_point: str
