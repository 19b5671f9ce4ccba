"""HumanEval-style code generation, scored by running the problem's tests in a sandbox.

A row is ``{"task_id", "prompt", "entry_point", "test", "canonical_solution"}``
(the HumanEval format): the prompt is a Python function's signature and
docstring (after any imports and helpers it needs), the canonical solution is
the function's body, and ``test`` defines ``check(candidate)``, a function of
``assert`` statements. An output passes when

    prompt + completion + "\\n" + test + "\\ncheck(<entry_point>)\\n"

exits with status 0 within ``timeout_s`` (and prints a random marker after
``check`` returned, so a completion cannot pass by exiting early), run as
``python3 -I`` in the OS sandbox of :mod:`teachgym.sandbox` (a completion is
untrusted code: a model's guess can loop, allocate without end or delete
files as easily as it can be right). A split is scored in one batch, all programs at once in a
:class:`~teachgym.sandbox.SandboxPool`.

The tests run in the same interpreter as the completion, so a completion
written to game them (returning an object whose ``__eq__`` is always true)
can still pass; the marker only closes the cheap exits.

Completions are read leniently (:func:`build_program`): a model that wraps
its code in a Markdown fence or writes the whole function again, signature
included, is scored on its code, not on its formatting. Generated training
examples are held to the task's own format, strictly (:meth:`CodeTask.verify`).

HumanEval has no skill labels: one skill (``all``) by default, or
``skills="discovered"`` (see :mod:`teachgym.envs.tasks.dataset`).
"""

from __future__ import annotations

import ast
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from teachgym.envs.tasks.dataset import DatasetTask, Row
from teachgym.sandbox import Limits, SandboxPool, SandboxResult, SandboxUnavailable
from teachgym.types import Problem

__all__ = ["CodeTask", "build_program", "entry_point_of", "extract_code", "restore_indent"]

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


def build_program(
    prompt: str,
    completion: str,
    test: str,
    entry_point: str,
    *,
    lenient: bool = True,
    marker: str | None = None,
) -> str:
    r"""The program whose exit status says whether ``completion`` passes ``test``.

    ``lenient=False`` is the HumanEval harness as it is: ``prompt + completion
    + test + check(entry_point)``, the completion taken as the function body.
    ``lenient=True`` (scoring a model's output) first takes the code out of a
    Markdown fence, then:

    - if the code defines ``entry_point`` at column 0 (the model wrote the
      whole function again), the program is the prompt's preamble (imports,
      helpers) followed by that code, cut before any ``if __name__ == ...``;
    - otherwise the code is the body, its indentation restored where it
      starts at column 0 (:func:`restore_indent`), cut at the first column-0
      line that starts another statement (``def``, ``class``, ``if``,
      ``print(``...).

    ``marker``: printed after ``check`` returns. Exit status 0 alone is not
    proof: a completion that calls ``sys.exit(0)`` or ``os._exit(0)`` when
    ``check`` first calls it ends the program with status 0 before a single
    assert ran. :class:`CodeTask` passes a fresh random marker per program
    and requires it as the last line of the output.

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
    if not lenient:
        return prompt + completion + "\n" + check
    code = extract_code(completion)
    if any(name == entry_point for name in _DEF.findall(code)):
        guard = _MAIN_GUARD.search(code)
        code = code[: guard.start()] if guard else code
        return _preamble(prompt, entry_point) + code + "\n" + check
    return prompt + _cut(restore_indent(prompt, code)) + "\n" + check


def _has_tests(test: str) -> bool:
    """Does ``test`` define ``check(candidate)`` with an ``assert`` that uses the candidate?

    A ``check`` that asserts nothing, or never calls the function it is
    given, passes any answer, so an example carrying it is unverified.
    """
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError):
        return False
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name != "check" or not node.args.args:
            continue
        param = node.args.args[0].arg
        for stmt in ast.walk(node):
            if isinstance(stmt, ast.Assert) and any(
                isinstance(n, ast.Name) and n.id == param for n in ast.walk(stmt)
            ):
                return True
    return False


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

    def __init__(
        self,
        path: Any = None,
        *,
        timeout_s: float = 5.0,
        workers: int | None = None,
        memory_mb: int = 1024,
        unsafe: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        if not isinstance(unsafe, bool):
            raise ValueError(f"unsafe must be true or false, got {unsafe!r}")
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
            raise ValueError(f"memory_mb must be an integer >= 64, got {memory_mb!r}")
        self.timeout_s = float(timeout_s)
        try:
            # before the data: a machine that cannot score should fail at once
            self.pool = SandboxPool(
                workers, limits=Limits(memory_bytes=memory_mb << 20), unsafe=unsafe
            )
        except SandboxUnavailable as e:
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

    def _check_batch(
        self, jobs: Sequence[tuple[str, str, str, str]], *, lenient: bool
    ) -> list[SandboxResult | None]:
        """Run ``(prompt, completion, test, entry_point)`` checks; ``None`` where one passed.

        A pass is exit status 0 with this run's marker as the last line of
        stdout (see :func:`build_program`); the result is returned otherwise.
        """
        markers = [f"teachgym-passed-{secrets.token_hex(16)}" for _ in jobs]
        programs = [
            build_program(*job, lenient=lenient, marker=marker)
            for job, marker in zip(jobs, markers, strict=True)
        ]
        out: list[SandboxResult | None] = []
        for result, marker in zip(self.run_batch(programs), markers, strict=True):
            lines = result.stdout.splitlines()
            out.append(None if result.passed and lines[-1:] == [marker] else result)
        return out

    def score_batch(self, problems: Sequence[Problem], outputs: Sequence[str]) -> list[bool]:
        """Does each output pass its problem's tests? All run at once in the sandbox pool."""
        if len(problems) != len(outputs):
            raise ValueError(f"got {len(problems)} problems but {len(outputs)} outputs")
        jobs: list[tuple[str, str, str, str]] = []
        for problem, output in zip(problems, outputs, strict=True):
            meta = problem.metadata
            if "test" not in meta or "entry_point" not in meta:
                raise ValueError(
                    f"problem {problem.id!r} has no metadata 'test'/'entry_point': "
                    "not a code task problem"
                )
            jobs.append((problem.prompt, output, meta["test"], meta["entry_point"]))
        return [failure is None for failure in self._check_batch(jobs, lenient=True)]

    def verify(self, candidates: Sequence[Mapping[str, str]]) -> list[str | None]:
        """Does each generated ``{"prompt", "answer", "test"}`` pass its own tests?

        ``None`` if it does, else the reason: ``"unparseable_prompt"`` (no
        top-level ``def`` to write, or not Python a body can follow),
        ``"no_tests"`` (``test`` does not define ``check(candidate)`` with an
        ``assert`` on the candidate), ``"timeout"``, ``"failed_tests"``. The
        answer is run as the body, through the harness without the lenient
        reading of :func:`build_program` (a student trained on it learns to
        write exactly that, so a fenced answer or one that repeats the
        signature fails). Only a first line that lost its indentation is
        re-indented (:func:`restore_indent`): an answer from a generator
        that strips whitespace may have lost it.
        """
        verdicts: list[str | None] = [None] * len(candidates)
        jobs: list[tuple[str, str, str, str]] = []
        where: list[int] = []
        for i, c in enumerate(candidates):
            prompt, answer, test = (str(c.get(k, "")) for k in ("prompt", "answer", "test"))
            entry = entry_point_of(prompt)
            if entry is None:
                verdicts[i] = "unparseable_prompt"
            elif not _has_tests(test):
                verdicts[i] = "no_tests"
            else:
                prompt = prompt if prompt.endswith("\n") else prompt + "\n"
                jobs.append((prompt, restore_indent(prompt, answer), test, entry))
                where.append(i)
        for i, failure in zip(where, self._check_batch(jobs, lenient=False), strict=True):
            if failure is not None:
                verdicts[i] = "timeout" if failure.status == "timeout" else "failed_tests"
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
