"""HumanEval-style code generation, scored by running the problem's tests in a sandbox.

A row is ``{"task_id", "prompt", "entry_point", "test", "canonical_solution"}``
(the HumanEval format): the prompt is a Python function's signature and
docstring (after any imports and helpers it needs), the canonical solution is
the function's body, and ``test`` defines ``check(candidate)``, a function of
``assert`` statements.

Judging happens outside the completion's interpreter, because a program that
runs the tests next to the completion can be made to pass by the completion:
it can read a pass marker from its own source or frames and print it, print
it from an ``atexit`` hook and ``os._exit(0)``, set a trace function that
jumps over ``check(...)``, or return an object equal to everything. So each
output is judged by two programs, each in its own sandbox of
:mod:`teachgym.sandbox` (own PID, mount and network namespaces, own user id
as root, own cgroup), joined only by two pipes (:meth:`Sandbox.run_pair`):

- the candidate's process defines the function from ``prompt`` and the
  completion (:func:`candidate_program`), then answers each call it is sent
  with plain data: the return value, the final state of the list, dict, set
  or bytearray arguments, or the name and message of the exception raised.
  Plain data is ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``,
  ``bytes``, ``bytearray``, ``list``, ``tuple``, ``dict``, ``set`` and
  ``frozenset``, nested at most 100 deep, and exactly those types (a
  subclass is not plain), encoded as tagged JSON so that a tuple stays a
  tuple and ``True`` stays ``True``; anything else is answered ``bad``.
- the tests' process runs the prompt (for the helpers the tests use), the
  tests and ``check`` on a stand-in for the function, which sends each call's
  arguments and rebuilds the answer from the data alone: the value, the
  argument mutations, or a built-in exception of that name (another
  exception becomes a ``CandidateError``), raised in the tests as if the
  function had raised it. A ``bad`` answer, a malformed one, one over 16 MiB
  or none at all raises an exception the tests' ``except Exception`` cannot
  catch, and fails the run whatever the tests do with it.

An output passes when the tests' process exits 0 within ``timeout_s`` and its
last line of output is a random marker it prints after ``check`` returned.
No code of the completion ever runs in that process: all a completion can
decide is the plain values its function answers with, which is what the
tests are there to judge. (It is record and replay with the replay done
live: the tests' process records each call and replays the candidate's
answer, in the same run.) Arguments a test passes must be plain data too.
A split is judged in one batch, all pairs at once in a
:class:`~teachgym.sandbox.SandboxPool`; :func:`build_program` is HumanEval's
own one-program harness, kept as the baseline of ``benchmarks/code_scoring.py``.

Completions are read leniently (:func:`candidate_program`): a model that wraps
its code in a Markdown fence or writes the whole function again, signature
included, is scored on its code, not on its formatting. Generated training
examples are held to the task's own format, strictly (:meth:`CodeTask.verify`).

HumanEval has no skill labels: one skill (``all``) by default, or
``skills="discovered"`` (see :mod:`teachgym.envs.tasks.dataset`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field

from teachgym.envs.tasks.code_asserts import has_tests
from teachgym.envs.tasks.code_asserts import vacuous_assert as vacuous_assert
from teachgym.envs.tasks.code_judge import (
    _client_program,
    _Job,
    _marked,
    _new_marker,
    _server_program,
)
from teachgym.envs.tasks.dataset import DatasetOptions, DatasetTask, Row
from teachgym.options import takes
from teachgym.sandbox import Limits, Sandbox, SandboxPool, SandboxResult, SandboxUnavailable
from teachgym.types import Problem

__all__ = [
    "CodeTask",
    "build_program",
    "candidate_program",
    "entry_point_of",
    "extract_code",
    "restore_indent",
    "vacuous_assert",
]

#: The first fenced block of a Markdown answer (language tag optional); an
#: unclosed fence (a generation cut off by its token budget) runs to the end.
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+.-]*[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)
#: A top-level ``def`` (the last one of a prompt is the function to write).
_DEF = re.compile(r"^def[ \t]+([A-Za-z_]\w*)[ \t]*\(", re.MULTILINE)
#: Lines at column 0 that end a body completion: whatever a model writes after
#: the function (the usual HumanEval stop sequences, plus decorators and imports).
_BODY_END = re.compile(r"^(?:def |class |if |print\(|#|@|import |from |assert )", re.MULTILINE)
#: A top-level ``if __name__ == ...`` block a model may append to a whole function.
_MAIN_GUARD = re.compile(r"^if[ \t]+__name__[ \t]*==", re.MULTILINE)


def extract_code(output: str) -> str:
    """The code of a model's output: the first fenced block's content, else the output.

    >>> extract_code("Here:\\n```python\\n    return 1\\n```\\nDone.")
    '    return 1\\n'
    >>> extract_code("    return 1\\n")
    '    return 1\\n'
    """
    for m in _FENCE.finditer(output):
        if m.group(1).strip():
            return m.group(1)
    return output


def entry_point_of(prompt: str) -> str | None:
    """The function a prompt asks for: its last top-level ``def``; ``None`` if it has none
    or the prompt is not Python a body can follow.

    >>> entry_point_of('import math\\n\\ndef area(r):\\n    \"\"\"Circle area.\"\"\"\\n')
    'area'
    >>> entry_point_of("Write a function that adds two numbers.") is None
    True
    """
    names = _DEF.findall(prompt)
    if not names:
        return None
    text = prompt if prompt.endswith("\n") else prompt + "\n"
    try:
        ast.parse(text + "    pass\n")
    except (SyntaxError, ValueError):
        return None
    return str(names[-1])


def _preamble(prompt: str, entry_point: str) -> str:
    """The prompt before its ``def entry_point``: imports and helpers the function may use."""
    starts = [m.start() for m in _DEF.finditer(prompt) if m.group(1) == entry_point]
    return prompt[: starts[-1]] if starts else prompt


def _cut(body: str) -> str:
    """``body`` up to the first column-0 line that starts another statement."""
    end = _BODY_END.search(body)
    return body[: end.start()] if end else body


def _compiles(source: str) -> bool:
    try:
        compile(source, "<completion>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def restore_indent(prompt: str, body: str) -> str:
    """``body`` with the indentation of a function body, if its first line lost it.

    Two ways a body arrives at column 0: written there whole (some chat
    models do), or with only its first line's indentation gone because the
    text was ``strip()``-ed on the way (the ``llm`` generator strips answers).
    Indenting every line by four spaces fixes the first, indenting the first
    line alone the second; the first that makes ``prompt + body`` compile is
    used (every line first: where both compile they mean the same). A body
    whose first line is indented is returned as it is.

    >>> restore_indent("def f(x):\\n", "y = x + 1\\n    return y\\n")
    '    y = x + 1\\n    return y\\n'
    >>> restore_indent("def f(x):\\n", "if x:\\n    return 1\\nreturn 2")
    '    if x:\\n        return 1\\n    return 2\\n'
    """
    lines = body.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return ""
    if lines[0][:1].isspace():
        return "\n".join(lines) + "\n"
    every = "".join(f"    {line}\n" if line.strip() else "\n" for line in lines)
    first = "    " + "\n".join(lines) + "\n"
    prompt = prompt if prompt.endswith("\n") else prompt + "\n"
    for candidate in (every, first):
        if _compiles(prompt + candidate):
            return candidate
    return every


def candidate_program(prompt: str, completion: str, entry_point: str, *, lenient: bool) -> str:
    r"""The module that defines ``entry_point`` from ``prompt`` and ``completion`` (no tests).

    ``lenient=False`` is the HumanEval reading as it is: ``prompt +
    completion``, the completion taken as the function body. ``lenient=True``
    (scoring a model's output) first takes the code out of a Markdown fence,
    then:

    - if the code defines ``entry_point`` at column 0 (the model wrote the
      whole function again), the module is the prompt's preamble (imports,
      helpers) followed by that code, cut before any ``if __name__ == ...``;
    - otherwise the code is the body, its indentation restored where it
      starts at column 0 (:func:`restore_indent`), cut at the first column-0
      line that starts another statement (``def``, ``class``, ``if``,
      ``print(``...).

    >>> prompt = "def inc(x):\n    '''x + 1'''\n"
    >>> print(candidate_program(prompt, "```python\ndef inc(x):\n    return x + 1\n```", "inc",
    ...                         lenient=True))
    def inc(x):
        return x + 1
    <BLANKLINE>
    """
    if not lenient:
        return prompt + completion
    code = extract_code(completion)
    if any(name == entry_point for name in _DEF.findall(code)):
        guard = _MAIN_GUARD.search(code)
        code = code[: guard.start()] if guard else code
        return _preamble(prompt, entry_point) + code
    return prompt + _cut(restore_indent(prompt, code))


def build_program(
    prompt: str,
    completion: str,
    test: str,
    entry_point: str,
    *,
    lenient: bool = True,
    marker: str | None = None,
) -> str:
    r"""HumanEval's own harness: one program, the completion and its tests together.

    ``candidate_program(...) + test + check(entry_point)``, then ``print(marker)``
    when given. :class:`CodeTask` does not judge this way (the tests would
    run in the interpreter the completion controls, see the module
    docstring); this is the program the original HumanEval harness runs,
    kept to compare against (``benchmarks/code_scoring.py``).

    >>> prompt = "def inc(x):\n    '''x + 1'''\n"
    >>> print(build_program(prompt, "```python\ndef inc(x):\n    return x + 1\n```", "T", "inc"))
    def inc(x):
        return x + 1
    <BLANKLINE>
    <BLANKLINE>
    T
    check(inc)
    <BLANKLINE>
    """
    check = f"\n{test}\ncheck({entry_point})\n"
    if marker is not None:
        check += f"print({marker!r})\n"
    return candidate_program(prompt, completion, entry_point, lenient=lenient) + "\n" + check


class CodeOptions(DatasetOptions):
    """Options of :class:`CodeTask` (``task: code``): a dataset task's, and the sandbox's."""

    timeout_s: float = Field(
        default=5.0, gt=0.0, description="wall-clock seconds a program may run"
    )
    workers: int | None = Field(
        default=None, ge=1, description="programs run at once; null: the CPU count"
    )
    memory_mb: int = Field(default=1024, ge=64, description="a program's address space, MiB")
    unsafe: bool = Field(
        default=False,
        description="run untrusted code without OS isolation where bubblewrap cannot run",
    )


class CodeTask(DatasetTask):
    """HumanEval-format problems, scored by their tests in the OS sandbox.

    Args (beyond the base's ``path``, ``val_size`` (40), ``test_size`` (84;
    HumanEval's 164 problems are one source, so the rest, 40, is the train
    pool ``sample`` shows a generator), ``split_seed``, ``skills``, ``llm``,
    ``discovery``, ``discovery_train_items``, ``hub_name``, ``hub_config``):
        timeout_s: wall-clock seconds a program may run (the test included).
        workers: programs run at once (default: the CPU count).
        memory_mb: address-space limit of a program, in MiB.
        unsafe: allow running untrusted code without OS isolation where
            bubblewrap cannot run (resource limits only). Without it the task
            refuses to build there.

    ``path=None`` loads ``openai/openai_humaneval`` from the hub (needs the
    ``datasets`` package). A problem's ``prompt`` is the HumanEval prompt, its
    ``answer`` the canonical body, ``metadata`` holds ``entry_point``,
    ``test`` and ``task_id``.
    """

    name = "code"
    hub_name = "openai/openai_humaneval"
    hub_config = None
    hub_train_split = None
    hub_test_split = "test"
    has_gold_skills = False
    default_val_size = 40
    default_test_size = 84
    #: A generated example carries its own tests (a ``def check(candidate):``
    #: of asserts), which :meth:`verify` runs its answer against.
    generation_fields: ClassVar[dict[str, int]] = {"test": 2000}
    #: Code has no final answer to compare: the ``llm`` generator's
    #: ``cross_check`` does not apply (it looks this up and finds none).
    answers_agree = None  # type: ignore[assignment]
    #: A generated body keeps its first line's indentation (see the Task protocol).
    indented_answers = True
    #: :meth:`verify` runs the answer against tests: a real check of the answer.
    verifies_answers = True

    @takes(CodeOptions)
    def __init__(
        self,
        path: Any,
        *,
        timeout_s: float,
        workers: int | None,
        memory_mb: int,
        unsafe: bool,
        **kwargs: Any,
    ) -> None:
        self.timeout_s = float(timeout_s)
        try:
            # before the data: a machine that cannot score should fail at once
            self.pool = SandboxPool(
                workers, limits=Limits(memory_bytes=memory_mb << 20), unsafe=unsafe
            )
        except SandboxUnavailable as e:
            if unsafe:  # refused even so (it would have run as root): the reason as it is
                raise SandboxUnavailable(f"the code task cannot run: {e}") from None
            raise SandboxUnavailable(
                "the code task runs model-written code and needs OS isolation (bubblewrap), "
                "which is not available here. Pass unsafe=True to the task (config: "
                f"task_kwargs: {{unsafe: true}}) to run it with resource limits only. ({e})"
            ) from None
        super().__init__(path, **kwargs)

    # -- rows -----------------------------------------------------------------

    def parse_row(self, row: Mapping[str, Any]) -> Row | None:
        fields = ("task_id", "prompt", "entry_point", "test", "canonical_solution")
        values = {k: row[k] for k in fields}
        for key, value in values.items():
            if not isinstance(value, str):
                raise TypeError(f"{key!r} must be a string, got {type(value).__name__}")
        if not values["prompt"].strip() or not values["entry_point"].strip():
            raise ValueError("'prompt' and 'entry_point' must not be empty")
        return Row(
            prompt=values["prompt"],
            answer=values["canonical_solution"],
            metadata={
                "entry_point": values["entry_point"],
                "test": values["test"],
                "task_id": values["task_id"],
            },
        )

    def row_key(self, row: Mapping[str, Any], index: int) -> str:
        """The row's ``task_id`` (``HumanEval/0``), so an id names the problem it is."""
        return str(row["task_id"])

    # -- scoring --------------------------------------------------------------

    def run_batch(self, programs: Sequence[str]) -> list[SandboxResult]:
        """Run whole programs in the task's sandbox pool, results in order."""
        return self.pool.map(programs, timeout_s=self.timeout_s)

    def _judge(self, jobs: Sequence[_Job]) -> list[SandboxResult | None]:
        """Judge each job (see the module docstring); ``None`` where it passed, else the
        result of the tests' process."""
        markers = [_new_marker() for _ in jobs]

        def judge(box: Sandbox, i: int) -> SandboxResult | None:
            job = jobs[i]
            server = _server_program(job.source, job.entry_point)
            client = _client_program(job.prompt, job.test, job.entry_point, markers[i])
            _, tests = box.run_pair(server, client, timeout_s=self.timeout_s)
            return None if _marked(tests, markers[i]) else tests

        return self.pool.map_with(judge, range(len(jobs)))

    def _passes_trivial(self, jobs: Sequence[_Job]) -> list[bool]:
        """Do the tests pass a candidate that returns None, or one that always raises?"""
        runs = [(job, mode) for job in jobs for mode in ("none", "raise")]
        markers = [_new_marker() for _ in runs]

        def run(box: Sandbox, i: int) -> bool:
            job, mode = runs[i]
            client = _client_program(job.prompt, job.test, job.entry_point, markers[i])
            return _marked(box.run(client, timeout_s=self.timeout_s, args=[mode]), markers[i])

        passed = self.pool.map_with(run, range(len(runs)))
        return [passed[2 * i] or passed[2 * i + 1] for i in range(len(jobs))]

    def score_batch(self, problems: Sequence[Problem], outputs: Sequence[str]) -> list[bool]:
        """Does each output pass its problem's tests? All judged at once in the sandbox pool."""
        if len(problems) != len(outputs):
            raise ValueError(f"got {len(problems)} problems but {len(outputs)} outputs")
        jobs: list[_Job] = []
        for problem, output in zip(problems, outputs, strict=True):
            meta = problem.metadata
            if "test" not in meta or "entry_point" not in meta:
                raise ValueError(
                    f"problem {problem.id!r} has no metadata 'test'/'entry_point': "
                    "not a code task problem"
                )
            entry = meta["entry_point"]
            source = candidate_program(problem.prompt, output, entry, lenient=True)
            jobs.append(_Job(source, problem.prompt, meta["test"], entry))
        return [failure is None for failure in self._judge(jobs)]

    def verify(self, candidates: Sequence[Mapping[str, str]]) -> list[str | None]:
        """Is each generated ``{"prompt", "answer", "test"}`` a checked example?

        ``None`` if so, else the reason, checked in this order:

        - ``"unparseable_prompt"``: no top-level ``def`` to write, or not
          Python a body can follow;
        - ``"no_tests"``: ``test`` does not define ``check(candidate)`` with
          an ``assert`` on the candidate;
        - ``"self_comparison"`` / ``"always_true"``: an assert on the
          candidate cannot fail (:func:`vacuous_assert`);
        - ``"timeout"`` / ``"failed_tests"``: the answer does not pass the
          tests (judged as :meth:`score_batch` judges a student);
        - ``"weak_tests"``: the tests also pass a trivially wrong candidate,
          one that returns None or one that always raises, so passing them
          proves nothing about the answer.

        The answer is run as the body, without the lenient reading of
        :func:`candidate_program` (a student trained on it learns to write
        exactly that, so a fenced answer or one that repeats the signature
        fails). Only a first line that lost its indentation is re-indented
        (:func:`restore_indent`): an answer from a generator that strips
        whitespace may have lost it.
        """
        verdicts: list[str | None] = [None] * len(candidates)
        jobs: list[_Job] = []
        where: list[int] = []
        for i, c in enumerate(candidates):
            prompt, answer, test = (str(c.get(k, "")) for k in ("prompt", "answer", "test"))
            entry = entry_point_of(prompt)
            if entry is None:
                verdicts[i] = "unparseable_prompt"
            elif not has_tests(test):
                verdicts[i] = "no_tests"
            elif (vacuous := vacuous_assert(test)) is not None:
                verdicts[i] = vacuous
            else:
                prompt = prompt if prompt.endswith("\n") else prompt + "\n"
                body = restore_indent(prompt, answer)
                source = candidate_program(prompt, body, entry, lenient=False)
                jobs.append(_Job(source, prompt, test, entry))
                where.append(i)
        passing: list[tuple[int, _Job]] = []
        for i, job, failure in zip(where, jobs, self._judge(jobs), strict=True):
            if failure is None:
                passing.append((i, job))
            else:
                verdicts[i] = "timeout" if failure.status == "timeout" else "failed_tests"
        weak = self._passes_trivial([job for _, job in passing])
        for (i, _), passes_wrong in zip(passing, weak, strict=True):
            if passes_wrong:
                verdicts[i] = "weak_tests"
        return verdicts

    def format_description(self, skill: str) -> str:
        return (
            "A prompt is Python source: any imports and helper functions the task needs, then "
            "one function's signature (with type hints) and a docstring that says what it "
            "must do, with a few >>> examples, and nothing after the docstring. The answer "
            "is only that function's body, the code that follows the docstring, indented by "
            "four spaces: no signature, no docstring, no Markdown fences, no explanation. "
            "Each example also carries its tests: a function `def check(candidate):` whose "
            "`assert` statements call `candidate` on inputs and compare with the expected "
            "results, including edge cases (empty inputs, negatives, ties)."
        )
