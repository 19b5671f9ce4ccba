"""The HumanEval-style code task: rows, sandboxed scoring, lenient completions, verify()."""

from __future__ import annotations

import gzip
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from teachgym import sandbox
from teachgym.envs.tasks.code import (
    CodeTask,
    build_program,
    entry_point_of,
    extract_code,
    restore_indent,
)
from teachgym.sandbox import SandboxUnavailable, isolation_available

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "code_small.jsonl"
HUMANEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval"

needs_bwrap = pytest.mark.skipif(
    not isolation_available(), reason="bubblewrap isolation is not available here"
)


@pytest.fixture(scope="module")
def task() -> CodeTask:
    if not isolation_available():
        pytest.skip("bubblewrap isolation is not available here")
    return CodeTask(FIXTURE, val_size=2, test_size=3, timeout_s=2.0, workers=2)


def all_problems(task: CodeTask) -> list:
    """Val, test and the whole train pool (drawn without replacement): every fixture row."""
    train = task.sample("all", task.train_size, np.random.default_rng(0))
    return task.problems("val") + task.problems("test") + train


def by_entry(task: CodeTask, entry: str):
    return next(p for p in all_problems(task) if p.metadata["entry_point"] == entry)


# -- rows and splits ------------------------------------------------------------------------


@needs_bwrap
def test_rows_become_problems(task: CodeTask) -> None:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    problems = all_problems(task)
    assert len(task.problems("val")) == 2 and len(task.problems("test")) == 3
    assert sorted(p.metadata["task_id"] for p in problems) == sorted(r["task_id"] for r in rows)
    row = {r["task_id"]: r for r in rows}
    for p in problems:
        r = row[p.metadata["task_id"]]
        assert p.id == f"code/pool/{r['task_id']}" and p.skill == "all"
        assert (p.prompt, p.answer) == (r["prompt"], r["canonical_solution"])
        assert (p.metadata["entry_point"], p.metadata["test"]) == (r["entry_point"], r["test"])
    assert task.generation_fields == {"test": 2000}
    assert task.answers_agree is None  # no cross_check for code
    text = task.format_description("all")
    assert "body" in text and "def check(candidate):" in text


def test_bad_rows_and_arguments_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x", "prompt": "def f():\n", "test": "t"}) + "\n")
    with pytest.raises(ValueError, match="row 0 is not a code row"):
        CodeTask(bad, val_size=1, test_size=1, unsafe=True)
    with pytest.raises(ValueError, match="timeout_s"):
        CodeTask(FIXTURE, val_size=1, test_size=1, timeout_s=0, unsafe=True)
    with pytest.raises(ValueError, match="memory_mb"):
        CodeTask(FIXTURE, val_size=1, test_size=1, memory_mb=1, unsafe=True)


# -- scoring --------------------------------------------------------------------------------


@needs_bwrap
def test_canonical_solutions_pass(task: CodeTask) -> None:
    problems = all_problems(task)
    assert len(problems) == 8
    assert task.score_batch(problems, [p.answer for p in problems]) == [True] * 8
    assert task.score(problems[0], problems[0].answer) is True


@needs_bwrap
def test_wrong_completions_fail(task: CodeTask) -> None:
    p = by_entry(task, "add_three")
    wrong = [
        "    return a + b\n",  # wrong answer
        "    return None\n",
        "",  # nothing written: the docstring-only function returns None
        "    return a +\n",  # syntax error
        "    raise ValueError('no')\n",
        "    while True:\n        pass\n",  # timeout
        "    import sys\n    sys.exit(0)\n",  # exits 0 before any assert ran
        "    import os\n    os._exit(0)\n",  # the same, uncatchable
        "```python\n    return a - b - c\n```",  # fenced, still wrong
    ]
    assert task.score_batch([p] * len(wrong), wrong) == [False] * len(wrong)
    with pytest.raises(ValueError, match="2 problems but 1 outputs"):
        task.score_batch([p, p], ["x"])


@needs_bwrap
def test_lenient_completions_are_scored_on_their_code(task: CodeTask) -> None:
    digit = by_entry(task, "digit_sum")  # its prompt holds a helper, _digits
    add = by_entry(task, "add_three")
    rmax = by_entry(task, "running_max")
    flat = "\n".join(line[4:] for line in rmax.answer.splitlines())  # the body at column 0
    header = add.prompt.split('    """')[0]  # "def add_three(a: int, b: int, c: int) -> int:\n"
    cases = [
        (add, "```python\n    return a + b + c\n```"),  # fenced body
        (add, f"Here is the function:\n\n```python\n{header}    return c + b + a\n```\nDone."),
        (add, f"{header}    return a + b + c\n"),  # signature repeated, no fence
        (add, "return a + b + c\n"),  # body written at column 0
        (add, "```\nreturn sum((a, b, c))\n"),  # unclosed fence (cut off), column 0
        (add, "    return a + b + c\n\n\nprint(add_three(1, 2, 3))\nif __name__ == '__main__':\n"),
        (rmax, rmax.answer.strip()),  # only the first line's indentation lost (a strip())
        (rmax, flat),  # every line at column 0, nested block included
        (digit, f"{digit.prompt}    return sum(_digits(n))\n"),  # the whole prompt repeated
        (
            digit,
            "```py\ndef digit_sum(n):\n    return sum(_digits(n))\n\n"
            "if __name__ == '__main__':\n    print(digit_sum(int(input())))\n```",
        ),
    ]
    scores = task.score_batch([p for p, _ in cases], [c for _, c in cases])
    assert scores == [True] * len(cases)


# -- forged passes: the completion knows the whole harness ----------------------------------

#: Completions of add_three that return a wrong value and try to pass anyway
#: (the four of the issue, and a few more that know the new harness).
FORGERIES = {
    # prints whatever looks like the pass marker, from its own source and the
    # code constants of every frame up the stack, and ends there with status 0
    "marker_from_source": (
        "    import sys, re\n"
        "    pattern = 'teachgym-passed-[0-9a-f]{32}'\n"
        "    seen = set(re.findall(pattern, open(__file__).read()))\n"
        "    f = sys._getframe()\n"
        "    while f:\n"
        "        seen |= {c for c in f.f_code.co_consts if isinstance(c, str)"
        " and re.fullmatch(pattern, c)}\n"
        "        f = f.f_back\n"
        "    for m in seen:\n"
        "        print(m)\n"
        "    sys.stdout.flush()\n"
        "    import os\n"
        "    os._exit(0)\n"
    ),
    # after check fails: print the marker and exit 0
    "atexit_marker": (
        "    import atexit, os, re, sys\n"
        "    marks = re.findall('teachgym-passed-[0-9a-f]{32}', open(__file__).read())\n"
        "    def forge():\n"
        "        sys.stdout.flush()\n"
        "        for m in marks:\n"
        "            print(m, flush=True)\n"
        "        os._exit(0)\n"
        "    atexit.register(forge)\n"
        "    sys.excepthook = lambda *a: forge()\n"
        "    return -1\n"
    ),
    # a trace function that jumps over the line that runs the tests, set by
    # module-level code after the whole function (which the lenient reading keeps)
    "trace_skips_check": (
        "def add_three(a, b, c):\n"
        "    return -1\n\n"
        "import linecache, sys\n"
        "def _skip(frame, event, arg):\n"
        "    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)\n"
        "    if event == 'line' and line.lstrip().startswith(('check(', '_main(', '_serve(')):\n"
        "        frame.f_lineno += 1\n"
        "    return _skip\n"
        "sys._getframe().f_trace = _skip\n"
        "sys.settrace(_skip)\n"
    ),
    # an object equal to everything
    "eq_always_true": (
        "    class Any:\n"
        "        def __eq__(self, other):\n"
        "            return True\n"
        "        __hash__ = object.__hash__\n"
        "    return Any()\n"
    ),
    "int_subclass_eq": (
        "    class Int(int):\n"
        "        def __eq__(self, other):\n"
        "            return True\n"
        "        __hash__ = int.__hash__\n"
        "    return Int(-1)\n"
    ),
    # writes what looks like a passing run to every stream it has
    "fake_output": (
        "    import os, sys\n"
        "    for fd in range(1, 10):\n"
        "        try:\n"
        "            os.write(fd, b'teachgym-passed-' + b'0' * 32 + b'\\n')\n"
        "        except OSError:\n"
        "            pass\n"
        "    sys.stdout.flush()\n"
        "    os._exit(0)\n"
    ),
    # reads the tests' process (pids, environment, files) for anything to copy
    "looks_for_the_judge": (
        "    import os\n"
        "    found = []\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit():\n"
        "            try:\n"
        "                found.append(open('/proc/%s/cmdline' % pid, 'rb').read())\n"
        "            except OSError:\n"
        "                pass\n"
        "    for m in found:\n"
        "        if b'teachgym-passed-' in m:\n"
        "            print(m)\n"
        "    return -1\n"
    ),
}


@needs_bwrap
def test_forged_passes_fail(task: CodeTask) -> None:
    p = by_entry(task, "add_three")
    forged = list(FORGERIES.values())
    assert task.score_batch([p] * len(forged), forged) == [False] * len(forged)
    # the attacks are real: HumanEval's one-program harness (the old judge) passes
    # the first four, a wrong answer each, for all its random marker
    marker = "teachgym-passed-" + "ab" * 16
    old = [
        build_program(p.prompt, f, p.metadata["test"], "add_three", marker=marker)
        for f in forged[:4]
    ]
    results = task.run_batch(old)
    assert [r.passed and r.stdout.splitlines()[-1:] == [marker] for r in results] == [True] * 4


FIDELITY_PROMPT = (
    "from typing import List, Tuple\n\n\n"
    "def stats(xs: List[float], *, strict: bool = False) -> Tuple[float, bool]:\n"
    '    """Mean of xs and whether it is positive; raises ValueError when xs is empty.\n'
    "    Sorts xs in place.\n"
    '    """\n'
)
FIDELITY_TEST = (
    "def check(candidate):\n"
    "    xs = [3.0, 1.0, 2.0]\n"
    "    mean, positive = out = candidate(xs)\n"
    "    assert type(out) is tuple and positive is True\n"
    "    assert abs(mean - 2.0) < 1e-6 and type(mean) is float\n"
    "    assert xs == [1.0, 2.0, 3.0]\n"  # sorted in place
    "    try:\n"
    "        candidate([])\n"
    "    except ValueError as e:\n"
    "        assert 'empty' in str(e)\n"
    "    else:\n"
    "        assert False, 'no ValueError'\n"
    "    assert candidate([-1.0], strict=True) == (-1.0, False)\n"
    "    for i in range(1, 300):\n"  # many calls
    "        assert candidate([float(i)])[0] == float(i)\n"
    "    assert stats.__name__ == 'stats'\n"  # the stand-in under the function's own name
)
FIDELITY_RIGHT = (
    "    if not xs:\n"
    "        raise ValueError('empty list')\n"
    "    xs.sort()\n"
    "    mean = sum(xs) / len(xs)\n"
    "    return (mean, mean > 0)\n"
)


@needs_bwrap
def test_values_cross_faithfully(task: CodeTask) -> None:
    """Types survive (tuple vs list, bool vs int, float), exceptions raise, mutations show."""
    from teachgym.types import Problem

    problem = Problem(
        id="code/x/fidelity", skill="all", prompt=FIDELITY_PROMPT, answer=FIDELITY_RIGHT,
        metadata={"entry_point": "stats", "test": FIDELITY_TEST, "task_id": "x"},
    )  # fmt: skip
    wrong = [
        FIDELITY_RIGHT.replace("return (mean, mean > 0)", "return [mean, mean > 0]"),  # a list
        FIDELITY_RIGHT.replace("mean > 0)", "int(mean > 0))"),  # 1, not True
        FIDELITY_RIGHT.replace("ValueError", "TypeError"),  # the wrong exception
        FIDELITY_RIGHT.replace("    xs.sort()\n", "    xs = sorted(xs)\n"),  # not in place
        FIDELITY_RIGHT.replace("return (mean, mean > 0)", "return iter((mean, mean > 0))"),
        FIDELITY_RIGHT.replace("    if not xs:\n        raise ValueError('empty list')\n", ""),
    ]
    outputs = [FIDELITY_RIGHT, *wrong]
    assert task.score_batch([problem] * len(outputs), outputs) == [True] + [False] * len(wrong)


@needs_bwrap
def test_a_broken_protocol_fails_even_where_the_tests_catch_everything(task: CodeTask) -> None:
    from teachgym.types import Problem

    test = (
        "def check(candidate):\n"
        "    try:\n"
        "        assert candidate(1) == 2\n"
        "    except Exception:\n"
        "        pass\n"
    )
    problem = Problem(
        id="code/x/catch", skill="all", prompt="def inc(x):\n    'x + 1'\n", answer="",
        metadata={"entry_point": "inc", "test": test, "task_id": "x"},
    )  # fmt: skip
    outputs = [
        "    return x + 1\n",
        "    return x\n",  # wrong, but these tests swallow the AssertionError: their fault
        "    return object()\n",  # not plain data: the stand-in raises what no except catches
        "    import os\n    os._exit(0)\n",  # gone before answering
    ]
    assert task.score_batch([problem] * 4, outputs) == [True, True, False, False]


def test_program_building_helpers() -> None:
    assert extract_code("a\n```python\nx = 1\n```\nb\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_code("```\n\n```\n```py\nz = 3\n```") == "z = 3\n"
    assert entry_point_of(
        "import os\n\ndef helper():\n    pass\n\ndef main(x):\n    '''d'''\n"
    ) == ("main")
    assert entry_point_of("def f(x:\n    '''broken'''\n") is None
    assert entry_point_of("    def indented(x):\n        '''d'''\n") is None
    prompt, test = "def f(x):\n    '''d'''\n", "def check(c):\n    assert c(1) == 2\n"
    strict = build_program(prompt, "    return x + 1", test, "f", lenient=False)
    assert strict == prompt + "    return x + 1\n\n" + test + "\ncheck(f)\n"
    assert restore_indent(prompt, "    return x\n") == "    return x\n"  # already a body
    assert restore_indent(prompt, "\n\n") == ""
    # both readings compile (no return to give the first-line-only one away): every line
    assert restore_indent(prompt, "y = x + 1\nprint(y)") == "    y = x + 1\n    print(y)\n"
    assert build_program(prompt, "```\n    return x + 1\n```", test, "f", marker="M").endswith(
        "check(f)\nprint('M')\n"
    )


# -- verify ---------------------------------------------------------------------------------


SWALLOWING_TEST = (
    "def check(candidate):\n"
    "    try:\n"
    "        assert candidate(2) == 4\n"
    "    except Exception:\n"
    "        pass\n"
)
#: Tests that print the pass marker from the harness's frames and exit 0.
FORGING_TEST = (
    "def check(candidate):\n"
    "    import os, re, sys\n"
    "    f = sys._getframe()\n"
    "    while f:\n"
    "        for c in f.f_code.co_consts:\n"
    "            if isinstance(c, str) and re.fullmatch('teachgym-passed-[0-9a-f]{32}', c):\n"
    "                print(c)\n"
    "        f = f.f_back\n"
    "    sys.stdout.flush()\n"
    "    os._exit(0)\n"
    "    assert candidate(2) == 4\n"
)


@needs_bwrap
def test_verify_reasons(task: CodeTask) -> None:
    prompt = 'def double(x: int) -> int:\n    """Twice x.\n    >>> double(2)\n    4\n    """\n'
    test = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-3) == -6\n"
    good = {"prompt": prompt, "answer": "    return 2 * x\n", "test": test}
    cases = [
        (good, None),
        ({**good, "prompt": prompt.rstrip("\n")}, None),  # no final newline: still fine
        ({**good, "answer": "return 2 * x"}, None),  # stripped, as the llm generator sends it
        ({**good, "answer": "y = x + x\n    return y"}, None),  # stripped, two lines
        ({**good, "answer": "    return x + 2\n"}, "failed_tests"),
        ({**good, "answer": "    import sys\n    sys.exit(0)\n"}, "failed_tests"),
        ({**good, "answer": "```python\n    return 2 * x\n```"}, "failed_tests"),  # strict format
        ({**good, "answer": "    while True:\n        pass\n"}, "timeout"),
        ({**good, "test": ""}, "no_tests"),
        ({"prompt": prompt, "answer": "    return 2 * x\n"}, "no_tests"),
        ({**good, "test": "def check(candidate):\n    assert True\n"}, "no_tests"),
        ({**good, "test": "def check(candidate):\n    pass\n"}, "no_tests"),
        ({**good, "test": "def check(candidate:\n    assert candidate(1)\n"}, "no_tests"),
        ({**good, "prompt": "Write a function that doubles a number."}, "unparseable_prompt"),
        ({**good, "prompt": "def double(x:\n    '''broken'''\n"}, "unparseable_prompt"),
        # asserts that cannot fail
        (
            {**good, "test": "def check(candidate):\n    assert candidate(3) == candidate(3)\n"},
            "self_comparison",
        ),
        ({**good, "test": test + "    assert candidate(2) == 5 or candidate\n"}, "always_true"),
        ({**good, "test": "def check(c):\n    assert c is not None\n"}, "always_true"),
        ({**good, "test": test + "    assert True, 'HumanEval writes these'\n"}, None),
        # tests that a trivially wrong candidate passes too
        ({**good, "test": "def check(candidate):\n    assert candidate(2) != 5\n"}, "weak_tests"),
        ({**good, "test": "def check(c):\n    assert c(2) == c(1 + 1)\n"}, "weak_tests"),
        ({**good, "test": SWALLOWING_TEST}, "weak_tests"),
        ({**good, "test": FORGING_TEST}, "weak_tests"),  # the tests forge the verdict
        # a contradictory test, and an answer that steals the pass marker
        (
            {
                **good,
                "test": test + "    assert candidate(2) == 5\n",
                "answer": FORGERIES["marker_from_source"],
            },
            "failed_tests",
        ),
        (
            {
                **good,
                "test": test + "    assert candidate(2) == 5\n",
                "answer": FORGERIES["atexit_marker"],
            },
            "failed_tests",
        ),
    ]
    verdicts = task.verify([c for c, _ in cases])
    assert verdicts == [reason for _, reason in cases]
    assert task.verify([]) == []


# -- isolation ------------------------------------------------------------------------------


def test_refuses_without_isolation_unless_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.box, "_default_bwrap", lambda: "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match=r"unsafe=True .*task_kwargs: \{unsafe: true\}"):
        CodeTask(FIXTURE, val_size=2, test_size=3)
    if os.geteuid() == 0 and not sandbox._world_usable(sys.executable):
        # as root, unsafe needs an interpreter a private user id can run: never root
        with pytest.raises(SandboxUnavailable, match="as root"):
            CodeTask(FIXTURE, val_size=2, test_size=3, unsafe=True)
        if not sandbox._world_usable("/usr/bin/python3"):
            return
        monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    monkeypatch.setattr(sandbox.box, "_warned_unsafe", False)
    unsafe = CodeTask(FIXTURE, val_size=2, test_size=3, unsafe=True, timeout_s=3.0)
    assert unsafe.pool.sandbox.isolated is False
    problems = unsafe.problems("test")
    with pytest.warns(RuntimeWarning, match="WITHOUT"):
        scores = unsafe.score_batch(problems, [p.answer for p in problems])
    assert scores == [True] * len(problems)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not per run
        assert unsafe.score_batch(problems[:1], ["    return None\n"]) == [False]


# -- real HumanEval -------------------------------------------------------------------------


@needs_bwrap
@pytest.mark.slow
@pytest.mark.skipif(not (HUMANEVAL / "HumanEval.jsonl.gz").exists(), reason="no HumanEval data")
def test_all_humaneval_canonical_solutions_pass() -> None:
    path = HUMANEVAL / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        n = sum(1 for line in f if line.strip())
    assert n == 164
    task = CodeTask(path, val_size=82, test_size=82, timeout_s=10.0)
    problems = task.problems("val") + task.problems("test")
    assert len({p.id for p in problems}) == 164
    assert sum(task.score_batch(problems, [p.answer for p in problems])) == 164
    # and an empty body fails every one of them: no test passes a function returning None
    assert sum(task.score_batch(problems, ["    pass\n"] * len(problems))) == 0


def test_the_cli_reports_missing_isolation_as_a_one_line_user_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from teachgym.config import default_config_path
    from teachgym.experiments.cli import main

    monkeypatch.setattr(sandbox.box, "_default_bwrap", lambda: "/nonexistent/bwrap")
    config = Path(default_config_path()).with_name("humaneval_cpu.yaml")
    code = main(["run", str(config), f"task_kwargs.path={FIXTURE}", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("teachgym: error:") and "unsafe: true" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
