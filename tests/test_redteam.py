"""Every attack of issue 15, tried again: one table, one row per attack.

Each row says what the attack did before (as the issue measured it) and
runs it against the code as it is now, asserting that it is contained. The
whole table runs in well under a minute on 2 cores. The detailed tests, each
checked by breaking its defence, are in ``test_sandbox.py``,
``test_code_task.py`` and ``test_generator_verification.py``; rows here reuse
their attack programs.

To add an attack, append an :class:`Attack` to the list of its kind:
``SANDBOX_ATTACKS``, ``REWARD_ATTACKS`` or ``CONFIG_ATTACKS`` (config files that
hang or flood the CLI: item 6 of the issue, kept for the CLI's own rows).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_code_task import FIXTURE, FORGERIES, FORGING_TEST
from test_sandbox import (
    BREAK_CLEANUP,
    FOUR_PROCESSES,
    KEYCTL_REVOKE,
    MEMFDS,
    as_unprivileged,
    deep_tree,
    host_victims,
    keyring_attack,
    read_key,
    unsafe_cleanup_batch,
    usable_python,
    victims_intact,
)

from teachgym import sandbox
from teachgym.envs.tasks.code import CodeTask
from teachgym.sandbox import Limits, Sandbox, SandboxUnavailable, isolation_available
from teachgym.types import Problem

pytestmark = pytest.mark.skipif(
    not isolation_available(), reason="bubblewrap isolation is not available here"
)


@dataclass(frozen=True)
class Attack:
    """One attack: its name, what it did before, and a check that it is contained now."""

    name: str
    before: str
    contained: Callable[[], None]


# -- the code task's reward ------------------------------------------------------------------


_task: CodeTask | None = None


def task() -> CodeTask:
    global _task
    if _task is None:
        _task = CodeTask(FIXTURE, val_size=2, test_size=3, timeout_s=3.0, workers=2)
    return _task


def add_three() -> Problem:
    t = task()
    pool = t.problems("val") + t.problems("test")
    pool += t.sample("all", t.train_size, np.random.default_rng(0))
    return next(p for p in pool if p.metadata["entry_point"] == "add_three")


def forged_answer_fails(name: str) -> Callable[[], None]:
    def check() -> None:
        assert task().score_batch([add_three()], [FORGERIES[name]]) == [False]

    return check


DOUBLE = 'def double(x: int) -> int:\n    """Twice x."""\n'
GOOD_TEST = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-3) == -6\n"


def verify_says(reason: str, test: str, answer: str = "    return 2 * x\n") -> Callable[[], None]:
    def check() -> None:
        assert task().verify([{"prompt": DOUBLE, "answer": answer, "test": test}]) == [reason]

    return check


REWARD_ATTACKS = [
    Attack("marker read from source and frames", "PASS (wrong answer scored correct)",
           forged_answer_fails("marker_from_source")),
    Attack("atexit hook prints the marker, os._exit(0)", "PASS",
           forged_answer_fails("atexit_marker")),
    Attack("trace function jumps over check(...)", "PASS",
           forged_answer_fails("trace_skips_check")),
    Attack("__eq__ always true", "PASS (documented)", forged_answer_fails("eq_always_true")),
    Attack("verify: assert candidate(3) == candidate(3)", "accepted",
           verify_says("self_comparison", "def check(candidate):\n    assert candidate(3) == candidate(3)\n")),  # noqa: E501
    Attack("verify: assert candidate or ...", "accepted",
           verify_says("always_true", "def check(candidate):\n    assert candidate or candidate(2) == 5\n")),  # noqa: E501
    Attack("verify: contradictory tests, marker-stealing answer", "accepted",
           verify_says("failed_tests", GOOD_TEST + "    assert candidate(2) == 5\n",
                       FORGERIES["marker_from_source"])),
    Attack("verify: tests that forge the verdict themselves", "accepted",
           verify_says("weak_tests", FORGING_TEST)),
]  # fmt: skip


# -- one run bounded as a whole --------------------------------------------------------------


def four_processes_over_the_limit() -> None:
    box = Sandbox(Limits(memory_bytes=256 << 20))
    result = box.run(FOUR_PROCESSES, timeout_s=10)
    statuses = eval(result.stdout.splitlines()[-1].removeprefix("ended "))
    if box.cgroups is not None:  # the run's memory together: all but one killed
        assert statuses.count(0) <= 1 and result.memory_peak <= 256 << 20, result.stdout
    else:  # the stated fallback: each process at most memory_bytes, at most nproc of them
        assert len(statuses) <= Limits().nproc


def memfds_over_the_limit() -> None:
    box = Sandbox(Limits(memory_bytes=256 << 20))
    result = box.run(MEMFDS, timeout_s=10)
    if box.cgroups is not None:
        assert result.status == "killed" and result.memory_peak <= 256 << 20
    else:
        assert result.stdout == "refused 1\n"  # memfd_create denied where nothing counts it


def no_user_namespace() -> None:
    code = (
        "import subprocess\n"
        "p = subprocess.run(['unshare', '-U', '-r', 'id', '-u'], capture_output=True)\n"
        "print(p.returncode, p.stdout)\n"
    )
    result = Sandbox().run(code, timeout_s=10)
    assert result.status == "ok" and result.stdout.split()[0] != "0", result.stdout
    assert "b''" in result.stdout


@contextlib.contextmanager
def parent_key() -> Iterator[tuple[int, str] | None]:
    numbers = sandbox._ARCHES.get(sandbox._machine())
    if numbers is None:
        yield None
        return
    libc, L = ctypes.CDLL(None, use_errno=True), ctypes.c_long
    desc = f"teachgym-redteam-{uuid.uuid4().hex}"
    key = libc.syscall(L(numbers[1]["add_key"]), b"user", desc.encode(), b"hunter2", L(7), L(-3))
    try:
        yield (key, desc) if key > 0 else None
    finally:
        if key > 0:
            libc.syscall(L(numbers[1]["keyctl"]), L(KEYCTL_REVOKE), L(key))


def keyring_out_of_reach() -> None:
    with parent_key() as found:
        if found is None:
            pytest.skip("no session keyring here")
        key, desc = found
        result = Sandbox().run(keyring_attack(key, desc), timeout_s=5)
        lines = result.stdout.splitlines()
        assert lines[0].startswith("read -1") and lines[1:] == [
            "update -1",
            "add -1",
            "listed False",
        ]
        assert read_key(key) == b"hunter2"
        assert "left-behind" not in Path("/proc/keys").read_text()


SANDBOX_ATTACKS = [
    Attack("4 processes x 150 MiB under a 256 MiB limit", "all held (2.4 GiB under 1 GiB)",
           four_processes_over_the_limit),
    Attack("20 memfds x 15 MiB under a 256 MiB limit", "300 MiB held", memfds_over_the_limit),
    Attack("unshare -U -r inside (root, then a tmpfs past the limits)", "uid 0, 600 MiB",
           no_user_namespace),
    Attack("read/overwrite a key of the parent's session keyring, leave keys",
           "read, overwritten, left behind", keyring_out_of_reach),
]  # fmt: skip


# -- clean-up and the interpreter ------------------------------------------------------------


def open_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="teachgym-redteam-", dir="/tmp"))
    path.chmod(0o755)
    return path


def deep_tree_in_a_batch() -> None:
    """1,200 nested directories and links to host files, as root and as a user (unsafe)."""
    python = usable_python()
    if python is None:
        pytest.skip("no interpreter an unprivileged id can run")
    where = open_dir()
    try:
        out = unsafe_cleanup_batch(where / "root", python)
        assert out["status"] == ["ok"] * 3 and out["left"] == [] and out["intact"], out
        if os.geteuid() == 0:
            os.chown(where, 65534, 65534)
            user = as_unprivileged(lambda: unsafe_cleanup_batch(where / "user", "/usr/bin/python3"))
            assert user["status"] == ["ok"] * 3 and user["left"] == [] and user["intact"], user
        isolated = Sandbox().run(BREAK_CLEANUP, timeout_s=20, args=["/etc/hostname", "/etc"])
        assert isolated.status == "ok"  # under bwrap the tree is in the run's own tmpfs
    finally:
        subprocess.run(["rm", "-rf", str(where)], check=False)


def symlink_chmod_as_a_user() -> None:
    where = open_dir()
    try:
        if os.geteuid() == 0:
            os.chown(where, 65534, 65534)

        def remove() -> dict:
            victim, victim_dir = host_victims(where / "host")
            top = where / "scratch"
            top.mkdir()
            deep_tree(top, victim, victim_dir)
            problem = sandbox._remove_tree(str(top))
            return {"problem": problem, "intact": victims_intact(victim, victim_dir)}

        assert as_unprivileged(remove) == {"problem": None, "intact": True}
        assert stat.S_IMODE((where / "host" / "victim.txt").stat().st_mode) == 0o644
    finally:
        subprocess.run(["rm", "-rf", str(where)], check=False)


def venv_under_tmp() -> None:
    where = open_dir()
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(where / "v")], check=True
        )  # fmt: skip
        result = Sandbox(python=str(where / "v" / "bin" / "python")).run("print(1)", timeout_s=5)
        assert (result.status, result.stdout) == ("ok", "1\n")
    finally:
        subprocess.run(["rm", "-rf", str(where)], check=False)


def unsafe_never_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("concerns runs as root")
    where = Path(tempfile.mkdtemp())  # 0700: no private id can reach an interpreter here
    try:
        (where / "python3").symlink_to(os.path.realpath(sys.executable))
        with pytest.raises(SandboxUnavailable, match="as root"):
            Sandbox(bwrap="/nonexistent/bwrap", unsafe=True, python=str(where / "python3"))
        if sandbox._world_usable("/usr/bin/python3"):
            sandbox.box._warned_unsafe = True
            box = Sandbox(bwrap="/nonexistent/bwrap", unsafe=True, python="/usr/bin/python3")
            code = "import os\ntry:\n    open('/etc/shadow').read()\n    print('READ')\n"
            code += "except OSError as e:\n    print(e.errno, os.getuid())\n"
            errno_, uid = box.run(code, timeout_s=5).stdout.split()
            assert errno_ == "13" and int(uid) >= sandbox._UID_BASE
    finally:
        subprocess.run(["rm", "-rf", str(where)], check=False)


CLEANUP_ATTACKS = [
    Attack("~1,000 nested directories break clean-up", "RecursionError: batch failed, dir stayed",
           deep_tree_in_a_batch),
    Attack("symlink to a user's file, parent not root", "host file chmod 0644 -> 0700",
           symlink_chmod_as_a_user),
    Attack("virtualenv under /tmp", "task refused to build", venv_under_tmp),
    Attack("unsafe: true as root reads /etc/shadow", "read it", unsafe_never_root),
]  # fmt: skip


# -- config files (item 6 of the issue) ------------------------------------------------------


def config_refused(content: bytes, expected: str, as_value: bool = False) -> Callable[[], None]:
    """The CLI, in this process, on a hostile config: exit 2, one short line, at once."""

    def check() -> None:
        import io
        import time

        from teachgym.experiments.cli import main

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "attack.yaml"
            path.write_bytes(content)
            argv = ["run", f"task_kwargs={content.decode()}"] if as_value else ["run", str(path)]
            err = io.StringIO()
            start = time.monotonic()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main([*argv, "--out", str(Path(tmp) / "run")])
            took = time.monotonic() - start
        lines = err.getvalue().strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], err.getvalue()[:1000]
        assert len(lines[0]) < 600 and took < 30, (len(lines[0]), took)

    return check


#: Nine levels of nine aliases: 9**9 strings if expanded (473 bytes of YAML).
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)

#: Config files that hang or flood the CLI: the CLI's own rows go here.
CONFIG_ATTACKS: list[Attack] = [
    Attack(
        "config-alias-bomb",
        "a 473-byte alias bomb was still running at 60 s; 425 bytes took 4.0 GB and printed 312 MB",
        config_refused(ALIAS_BOMB.encode(), "YAML aliases are not allowed"),
    ),
    Attack(
        "config-alias-bomb-as-value",
        "the same bomb as a key=value override",
        config_refused(
            ("{" + ALIAS_BOMB.replace("\n", ", ").rstrip(", ") + "}").encode(),
            "YAML aliases are not allowed",
            as_value=True,
        ),
    ),
    Attack(
        "config-10mb-value",
        "a 10 MB string value was echoed whole on stderr",
        config_refused(b"task: '" + b"x" * 10_000_000 + b"'\n", "limited to 1 MiB"),
    ),
    Attack(
        "config-long-value",
        "a long value was echoed whole in the error",
        config_refused(b"task: '" + b"x" * 500_000 + b"'\n", "chars)"),
    ),
    Attack(
        "config-undecodable",
        "undecodable bytes printed a traceback (exit 1)",
        config_refused(b"seed: \xff\xfe\n", "is not UTF-8 text"),
    ),
    Attack(
        "config-syntax-error",
        "a YAML syntax error printed a traceback (exit 1)",
        config_refused(b"seed: [1, 2\n", "invalid YAML"),
    ),
    Attack(
        "config-deep-nesting",
        "(not reported: nesting deep enough to overflow the parser's recursion)",
        config_refused(b"seed: " + b"[" * 50_000 + b"\n", "YAML"),
    ),
]


ATTACKS = REWARD_ATTACKS + SANDBOX_ATTACKS + CLEANUP_ATTACKS + CONFIG_ATTACKS


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_contained(attack: Attack) -> None:
    attack.contained()


def test_the_table_is_whole() -> None:
    names = [a.name for a in ATTACKS]
    assert len(set(names)) == len(names)
    assert len(REWARD_ATTACKS) == 8 and len(SANDBOX_ATTACKS) == 4 and len(CLEANUP_ATTACKS) == 4
    assert len(CONFIG_ATTACKS) == 7
