"""The sandbox contains hostile programs, and the host is unharmed afterwards.

Every containment case checks both sides: the attack was really attempted
inside (the program reports that it ran, got ``os``, reached libc...), and
outside nothing changed (files intact, no connection arrived, no process of
the run left, the host can still fork).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teachgym import sandbox
from teachgym.sandbox import (
    Limits,
    Sandbox,
    SandboxPool,
    SandboxUnavailable,
    isolation_available,
)

REPO = Path(__file__).resolve().parents[1]

needs_bwrap = pytest.mark.skipif(
    not isolation_available(), reason="bubblewrap isolation is not available here"
)


def pids_with(marker: str) -> list[int]:
    """Host processes whose command line contains ``marker``."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                out.append(int(entry.name))
    return out


def alive(pids: list[int]) -> list[int]:
    """The pids that exist and are not zombies."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            out.append(pid)
    return out


def host_can_fork() -> bool:
    return subprocess.run(["true"], timeout=10).returncode == 0


class Watcher:
    """Counts host processes carrying ``marker`` while a run is going on."""

    def __init__(self, marker: str) -> None:
        self.marker, self.peak, self.forked_meanwhile = marker, 0, True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            n = len(alive(pids_with(self.marker)))
            self.peak = max(self.peak, n)
            if n:
                self.forked_meanwhile &= host_can_fork()
            time.sleep(0.02)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def scratch_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the sandbox create its scratch directories (and output files) here."""
    root = tmp_path / "scratch"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- plain behaviour ------------------------------------------------------------------------


@needs_bwrap
def test_statuses_output_and_stdin() -> None:
    box = Sandbox()
    ok = box.run("import sys\nprint(sys.stdin.read().upper())", stdin="hello", timeout_s=3)
    assert (ok.status, ok.returncode, ok.stdout, ok.passed, ok.isolated) == (
        "ok", 0, "HELLO\n", True, True,
    )  # fmt: skip
    failed = box.run("import sys\nprint('oops', file=sys.stderr)\nsys.exit(3)", timeout_s=3)
    assert (failed.status, failed.returncode, failed.stderr, failed.passed) == (
        "failed", 3, "oops\n", False,
    )  # fmt: skip
    raised = box.run("assert 1 == 2", timeout_s=3)
    assert raised.status == "failed" and "AssertionError" in raised.stderr
    signalled = box.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", timeout_s=3)
    assert (signalled.status, signalled.returncode) == ("killed", -11)


@needs_bwrap
def test_a_sandbox_that_cannot_start_is_an_error_not_a_failure() -> None:
    box = Sandbox()
    box.bwrap = "/bin/false"  # exits 1 at once, before any sandbox exists
    result = box.run("pass", timeout_s=3)
    assert (result.status, result.returncode, result.passed) == ("error", 1, False)


@needs_bwrap
def test_output_is_truncated_to_the_bound() -> None:
    code = "print('a' * 50_000 + 'b' * 50_000 + 'END')"
    result = Sandbox(Limits(output_bytes=100)).run(code, timeout_s=3)
    assert result.status == "ok"
    head, cut, tail = result.stdout.split("\n", 2)
    assert head == "a" * 50 and tail == "b" * 46 + "END\n"  # the start and the end are kept
    assert cut == "[... 99904 bytes of output truncated ...]"


@needs_bwrap
def test_cpu_limit_kills_before_the_wall_clock() -> None:
    result = Sandbox(Limits(cpu_s=1)).run("while True: pass", timeout_s=10)
    assert (result.status, result.returncode) == ("killed", -24)  # SIGXCPU
    assert result.wall_s < 10  # SIGXCPU, not the wall clock (a loaded machine is slow)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="memory_bytes"):
        Limits(memory_bytes=0)
    with pytest.raises(ValueError, match="cpu_s"):
        Limits(cpu_s=0)
    with pytest.raises(ValueError, match="workers"):
        SandboxPool(workers=0, unsafe=True)
    box = Sandbox(unsafe=True)
    with pytest.raises(ValueError, match="timeout_s"):
        box.run("pass", timeout_s=0)
    with pytest.raises(ValueError, match="code must be a str"):
        box.run(b"pass")  # type: ignore[arg-type]


# -- runaway programs -----------------------------------------------------------------------


@needs_bwrap
def test_infinite_loop_times_out_fast_and_leaves_nothing(scratch_root: Path) -> None:
    marker = f"loop-{uuid.uuid4().hex}"
    code = (
        "import os, sys\n"
        f"os.execv(sys.executable, [sys.executable, '-c', 'while True: pass', '{marker}'])\n"
    )
    with Watcher(marker) as watch:
        result = Sandbox().run(code, timeout_s=1.5)
    assert result.status == "timeout" and result.returncode is None
    assert 1.4 < result.wall_s < 3.0
    assert watch.peak == 1  # it did run...
    assert pids_with(marker) == []  # ...and is gone, not even a zombie
    assert list(scratch_root.iterdir()) == []  # scratch directory removed after the kill


@needs_bwrap
@pytest.mark.slow
def test_fork_bomb_is_contained_and_host_can_fork() -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    code = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {bomb!r}, {marker!r}])"
    with Watcher(marker) as watch:
        result = Sandbox(Limits(nproc=16)).run(code, timeout_s=2.5)
    assert result.status == "timeout"
    assert 2 <= watch.peak <= 16  # it forked, up to RLIMIT_NPROC and no further
    assert watch.forked_meanwhile  # the host could fork while the bomb was at its limit
    assert pids_with(marker) == []
    assert host_can_fork()


@needs_bwrap
def test_memory_bomb_fails_and_host_is_fine() -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n"
    result = Sandbox(Limits(memory_bytes=256 << 20)).run(code, timeout_s=3)
    assert result.status == "failed" and "MemoryError" in result.stderr
    assert result.wall_s < 2.5
    assert bytearray(256 << 20)[-1] == 0  # the host allocates as before
    assert host_can_fork()


@needs_bwrap
def test_huge_file_write_is_stopped_and_nothing_stays_on_disk(scratch_root: Path) -> None:
    code = (
        "import os\n"
        "try:\n"
        "    with open('big.bin', 'wb') as f:\n"
        "        for _ in range(200):\n"
        "            f.write(b'x' * (1 << 20))\n"
        "except OSError as e:\n"
        "    print('stopped at', os.path.getsize('big.bin'), e.errno)\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        with open(f'/tmp/f{n}', 'wb') as f:\n"
        "            f.write(b'y' * (1 << 20))\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('tmp full after', n, e.errno)\n"
    )
    limits = Limits(file_bytes=4 << 20, tmp_bytes=8 << 20)
    result = Sandbox(limits).run(code, timeout_s=3)
    assert result.status == "ok", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"stopped at {4 << 20} 27"  # EFBIG at RLIMIT_FSIZE
    assert lines[1].startswith("tmp full after") and lines[1].endswith(" 28")  # ENOSPC
    assert int(lines[1].split()[3]) <= 8
    assert list(scratch_root.iterdir()) == []


# -- the filesystem -------------------------------------------------------------------------


@needs_bwrap
def test_cannot_write_or_delete_outside(tmp_path: Path, scratch_root: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    readme = REPO / "README.md"
    before = sha(readme)
    targets = [str(keep), str(readme), str(REPO / "pwned.txt"), "/root/pwned.txt"]
    targets += ["/usr/pwned.txt", f"{sys.prefix}/pwned.txt", "/etc/pwned.txt"]
    code = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        with open(path, 'a') as f:\n"
        "            f.write('pwned')\n"
        "        print('WROTE', path)\n"
        "    except OSError as e:\n"
        "        print('refused', path, e.errno)\n"
        "    try:\n"
        "        os.remove(path)\n"
        "        print('REMOVED', path)\n"
        "    except OSError as e:\n"
        "        print('refused', path, e.errno)\n"
        "open('mine.txt', 'w').write('scratch is writable')\n"
        "print(open('mine.txt').read())\n"
    )
    result = Sandbox().run(code, timeout_s=3)
    assert result.status == "ok", result.stderr
    assert "WROTE" not in result.stdout and "REMOVED" not in result.stdout
    assert result.stdout.count("refused") == 2 * len(targets)
    assert result.stdout.endswith("scratch is writable\n")
    assert keep.read_text() == "original" and sha(readme) == before
    assert not (REPO / "pwned.txt").exists() and not Path("/root/pwned.txt").exists()
    assert list(scratch_root.iterdir()) == []


@needs_bwrap
def test_cannot_read_a_secret_outside(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    code = (
        "import os\n"
        f"for path in [{str(secret)!r}, '/proc/1/root{secret}', '/etc/shadow', '/root/.bashrc']:\n"
        "    try:\n"
        "        print('READ', open(path).read())\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
        f"print('tmp holds', os.listdir('/tmp'), os.path.exists({str(tmp_path)!r}))\n"
        "print(sorted(os.listdir('/')))\n"
    )
    result = Sandbox().run(code, timeout_s=3)
    assert result.status == "ok", result.stderr
    assert token not in result.stdout + result.stderr
    assert "READ" not in result.stdout
    # Nothing of the host's /tmp but the path to this interpreter, when it lives there
    # (a checkout cloned under /tmp).
    assert f"tmp holds {_own_tmp_entries()!r} False" in result.stdout
    top = eval(result.stdout.splitlines()[-1])  # the sandbox's root: no home, no /work repo
    assert "home" not in top and "sys" not in top and "sandbox" in top


# -- the network ----------------------------------------------------------------------------


@needs_bwrap
def test_cannot_reach_a_listener_on_host_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            f"for host in ['127.0.0.1', 'localhost', '0.0.0.0', {socket.gethostname()!r}]:\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=0.5).sendall(b'hi')\n"
            "        print('CONNECTED', host)\n"
            "    except OSError as e:\n"
            "        print('refused', host, type(e).__name__)\n"
            # its own loopback works: the refusals above are not a broken network stack
            "own = socket.create_server(('127.0.0.1', 0))\n"
            "c = socket.create_connection(own.getsockname())\n"
            "print('own loopback', own.accept()[0] is not None)\n"
            "print(socket.if_nameindex())\n"
        )
        result = Sandbox().run(code, timeout_s=3)
        server.settimeout(0.3)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.status == "ok", result.stderr
    assert "CONNECTED" not in result.stdout and result.stdout.count("refused") == 4
    assert "own loopback True" in result.stdout
    assert result.stdout.splitlines()[-1] == "[(1, 'lo')]"


@needs_bwrap
def test_no_network_interface_but_loopback() -> None:
    code = "import os, socket\nprint(socket.if_nameindex(), os.path.exists('/sys/class/net'))\n"
    result = Sandbox().run(code, timeout_s=3)
    assert result.stdout == "[(1, 'lo')] False\n"


# -- escapes from Python-level restrictions -------------------------------------------------


@needs_bwrap
def test_subclasses_escape_reaches_os_but_not_the_host(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    victim = subprocess.Popen(["sleep", "30"])
    try:
        code = (
            "wrap = [c for c in ().__class__.__bases__[0].__subclasses__()"
            " if c.__name__ == '_wrap_close'][0]\n"
            "g = wrap.__init__.__globals__\n"
            "print('GOT_OS', g['__name__'])\n"
            f"print('system', g['system']('echo pwned > {tmp_path}/pwned'))\n"
            f"print('system', g['system']('rm {keep}'))\n"
            f"try:\n    g['kill']({victim.pid}, 9)\n    print('KILLED')\n"
            "except OSError as e:\n    print('kill refused', type(e).__name__)\n"
            "print('pids', sorted(int(p) for p in g['listdir']('/proc') if p.isdigit()))\n"
        )
        result = Sandbox().run(code, timeout_s=3)
        assert result.status == "ok", result.stderr
        assert "GOT_OS os" in result.stdout
        assert "system 0" not in result.stdout  # the shell ran but could not write or delete
        assert "kill refused ProcessLookupError" in result.stdout
        pids = eval(result.stdout.splitlines()[-1].removeprefix("pids "))
        assert pids[0] == 1 and len(pids) <= 3  # only its own PID namespace
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
    assert not (tmp_path / "pwned").exists() and keep.read_text() == "original"


@needs_bwrap
def test_ctypes_libc_calls_are_contained(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None)\n"
        "print('CTYPES_OK', libc.getpid())\n"
        f"print('unlink', libc.unlink({str(keep).encode()!r}))\n"
        f"print('system', libc.system(b'touch {tmp_path}/pwned'))\n"
        "print('setuid0', libc.setuid(0))\n"
    )
    result = Sandbox().run(code, timeout_s=3)
    assert result.status == "ok", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CTYPES_OK ")
    assert lines[1] == "unlink -1" and lines[3] == "setuid0 -1"
    assert lines[2] != "system 0"
    assert keep.read_text() == "original" and not (tmp_path / "pwned").exists()


# -- nothing outlives the call --------------------------------------------------------------


@needs_bwrap
def test_children_and_daemons_die_with_the_run() -> None:
    marker = f"daemon-{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys, time\n"
        "subprocess.Popen(['sleep', '987654'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"  # the double-forked daemon, writing a heartbeat
        '        loop = \'import time\\nwhile True:\\n open("/tmp/beat", "a").write(".")\\n'
        " time.sleep(0.05)'\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', loop, '{marker}'])\n"
        "    os._exit(0)\n"
        "while not os.path.exists('/tmp/beat'):\n"
        "    time.sleep(0.01)\n"
        "time.sleep(0.3)\n"
        "print('daemon beating')\n"
    )
    with Watcher(marker) as watch:
        result = Sandbox().run(code, timeout_s=3)
    assert result.status == "ok" and result.stdout == "daemon beating\n", result.stderr
    assert watch.peak == 1  # the daemon existed on the host during the run
    assert pids_with(marker) == []
    assert alive(pids_with("987654")) == []


# -- availability and the unsafe mode -------------------------------------------------------


def usable_python() -> str | None:
    """An interpreter an unprivileged id can run (what an unsafe run as root needs), or None."""
    if os.geteuid() != 0 or sandbox._world_usable(sys.executable):
        return sys.executable
    return "/usr/bin/python3" if sandbox._world_usable("/usr/bin/python3") else None


needs_usable_python = pytest.mark.skipif(
    usable_python() is None, reason="no interpreter an unprivileged user id can run"
)


@needs_usable_python
def test_without_isolation_running_needs_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "/nonexistent/bwrap"
    assert not isolation_available(missing)
    with pytest.raises(SandboxUnavailable, match="unsafe=True"):
        Sandbox(bwrap=missing)
    with pytest.raises(SandboxUnavailable, match="unsafe=True"):
        SandboxPool(2, bwrap=missing)
    monkeypatch.setattr(sandbox.box, "_warned_unsafe", False)
    box = Sandbox(bwrap=missing, unsafe=True, python=usable_python())
    with pytest.warns(RuntimeWarning, match="WITHOUT"):
        result = box.run("import os\nprint(os.getcwd() != '/sandbox')", timeout_s=3)
    assert (result.status, result.stdout, result.isolated) == ("ok", "True\n", False)


@needs_usable_python
def test_unsafe_mode_keeps_timeout_and_limits(
    monkeypatch: pytest.MonkeyPatch, scratch_root: Path
) -> None:
    monkeypatch.setattr(sandbox.box, "_warned_unsafe", True)
    box = Sandbox(
        Limits(memory_bytes=256 << 20), bwrap="/nonexistent/bwrap", unsafe=True,
        python=usable_python(),
    )  # fmt: skip
    marker = f"unsafe-{uuid.uuid4().hex}"
    code = (
        "import os, sys\n"
        f"os.execv(sys.executable, [sys.executable, '-c', 'while True: pass', '{marker}'])\n"
    )
    result = box.run(code, timeout_s=1)
    assert result.status == "timeout" and result.wall_s < 2.5
    assert pids_with(marker) == []
    assert box.run("bytearray(512 << 20)", timeout_s=3).status == "failed"
    assert list(scratch_root.iterdir()) == []


@pytest.mark.skipif(
    os.geteuid() != 0 or not sandbox._world_usable("/usr/bin/python3"),
    reason="needs root and a system Python any user can run",
)
def test_unsafe_mode_as_root_uses_a_private_id_and_kills_its_daemons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sandbox.box, "_warned_unsafe", True)
    box = Sandbox(bwrap="/nonexistent/bwrap", unsafe=True, python="/usr/bin/python3")
    marker = f"escaped-{uuid.uuid4().hex}"
    code = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"  # out of the process group: killpg cannot reach it
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
        f"{marker!r}])\n"
        "try:\n"
        "    open('/etc/shadow').read()\n"
        "    print('READ SHADOW')\n"
        "except OSError as e:\n"
        "    print('shadow refused', e.errno)\n"
        "print(os.getuid())\n"
    )
    result = box.run(code, timeout_s=3)
    assert result.status == "ok" and not result.isolated, result.stderr
    assert result.stdout.splitlines()[0] == "shadow refused 13"
    assert int(result.stdout.splitlines()[1]) >= sandbox._UID_BASE  # not root
    assert alive(pids_with(marker)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal concerns runs as root")
def test_unsafe_never_runs_as_root(tmp_path: Path) -> None:
    """An interpreter a private id cannot run (under a 0700 directory): refuse, never root."""
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    python = hidden / "python3"
    python.symlink_to(os.path.realpath(sys.executable))
    assert not sandbox._world_usable(str(python))
    with pytest.raises(SandboxUnavailable, match="as root") as refused:
        Sandbox(bwrap="/nonexistent/bwrap", unsafe=True, python=str(python))
    assert "\n" not in str(refused.value)


# -- where bwrap cannot start, the error says why -------------------------------------------


def test_bwrap_failure_quotes_bwrap_and_names_the_cause(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    said = "bwrap: No permissions to create new namespace, likely because the kernel does not allow non-privileged user namespaces."  # noqa: E501
    fake.write_text(f"#!/bin/sh\necho '{said}' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable) as refused:
        Sandbox(bwrap=str(fake))
    message = str(refused.value)
    assert said[:60] in message  # bwrap's own words...
    assert "user namespaces" in message and "max_user_namespaces" in message  # ...and the cause
    assert "\n" not in message


@needs_bwrap
def test_a_real_bwrap_failure_is_quoted(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable) as refused:
        Sandbox(python=str(tmp_path / "no-such-python"))
    message = str(refused.value)
    assert "execvp" in message and "no-such-python" in message
    assert "cannot be started inside the sandbox" in message


@needs_bwrap
def test_a_virtualenv_under_tmp_works(tmp_path: Path) -> None:
    """CI clones into /tmp: the private /tmp must not hide an interpreter that lives there."""
    assert str(tmp_path).startswith("/tmp/")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = str(venv / "bin" / "python")
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "only_in_this_venv.py").write_text("WHERE = __file__\n")
    box = Sandbox(python=python)
    assert box.isolated, box.unavailable_reason
    code = "import only_in_this_venv, os, sys\nprint(only_in_this_venv.WHERE)\n"
    code += "print(sys.executable)\nprint(os.listdir('/tmp'))\n"
    result = box.run(code, timeout_s=5)
    assert result.status == "ok", result.stderr
    module, executable, listing = result.stdout.splitlines()
    assert module == str(site / "only_in_this_venv.py") and executable == python
    # only the path to the venv is there, not the rest of the host's /tmp
    assert sorted(eval(listing)) == sorted({str(tmp_path).split("/")[2], *_own_tmp_entries()})


def _own_tmp_entries() -> list[str]:
    """The /tmp entries the sandbox shows for the running interpreter's own paths: the
    first directory under /tmp of its prefix, when the venv lives there (CI clones into
    /tmp); none otherwise."""
    parts = Path(sys.prefix).resolve().parts
    return [parts[2]] if len(parts) > 2 and parts[1] == "tmp" else []


# -- the pool -------------------------------------------------------------------------------


@needs_bwrap
def test_pool_keeps_order_and_runs_in_parallel() -> None:
    codes = [f"import time\ntime.sleep({0.1 * (6 - i)})\nprint({i})" for i in range(6)]
    pool = SandboxPool(workers=6)
    start = time.monotonic()
    results = pool.map(codes, timeout_s=5)
    wall = time.monotonic() - start
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]
    serial = sum(0.1 * (6 - i) for i in range(6))  # 2.1 s of sleeping
    assert wall < serial * 0.6, f"pool took {wall:.2f}s for {serial:.1f}s of sleep"
    assert pool.map([]) == []


# -- one run is bounded as a whole ----------------------------------------------------------

needs_cgroup = pytest.mark.skipif(
    not isolation_available() or sandbox._cgroup_root()[0] is None,
    reason="no cgroup can be created here (the per-process fallback is tested below)",
)

#: Four processes of 150 MiB each: 600 MiB, under a 256 MiB limit of the run.
FOUR_PROCESSES = (
    "import os, time\n"
    "kids = []\n"
    "for i in range(4):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        b = bytearray(150 << 20)\n"
    "        for j in range(0, len(b), 4096):\n"
    "            b[j] = 1\n"
    "        print('held', i, flush=True)\n"
    "        time.sleep(0.5)\n"
    "        os._exit(0)\n"
    "    kids.append(pid)\n"
    "print('ended', [os.waitpid(p, 0)[1] for p in kids])\n"
)
#: Twenty memfds of 15 MiB (300 MiB), never mapped, so no address space counts them.
MEMFDS = (
    "import os\n"
    "fds = []\n"
    "try:\n"
    "    for i in range(20):\n"
    "        fd = os.memfd_create('m%d' % i)\n"
    "        for _ in range(15):\n"
    "            os.write(fd, b'x' * (1 << 20))\n"
    "        fds.append(fd)\n"
    "        print('memfds', len(fds), flush=True)\n"
    "except OSError as e:\n"
    "    print('refused', e.errno, flush=True)\n"
)
#: POSIX shared memory: files in /dev/shm, 10 MiB each.
SHM_FILES = (
    "import os\n"
    "n = 0\n"
    "try:\n"
    "    while n < 40:\n"
    "        with open('/dev/shm/s%d' % n, 'wb') as f:\n"
    "            f.write(b'y' * (10 << 20))\n"
    "        n += 1\n"
    "except OSError as e:\n"
    "    print('refused', e.errno)\n"
    "print('shm files', n)\n"
)


@needs_cgroup
def test_memory_of_all_processes_together_is_bounded() -> None:
    result = Sandbox(Limits(memory_bytes=256 << 20)).run(FOUR_PROCESSES, timeout_s=10)
    ended = result.stdout.splitlines()[-1]
    assert ended.startswith("ended "), result.stdout
    statuses = eval(ended.removeprefix("ended "))
    # each alone fits, two together do not: the kernel killed (SIGKILL) all but one
    assert statuses.count(0) <= 1 and statuses.count(9) >= 3, result.stdout
    assert result.memory_peak is not None and result.memory_peak <= 256 << 20


@needs_cgroup
def test_memfd_and_shared_memory_count_against_the_run() -> None:
    box = Sandbox(Limits(memory_bytes=256 << 20, tmp_bytes=512 << 20))
    memfd = box.run(MEMFDS, timeout_s=10)
    counts = [int(line.split()[1]) for line in memfd.stdout.splitlines() if "memfds" in line]
    assert counts and max(counts) * 15 < 256  # stopped before 256 MiB were held
    assert memfd.status == "killed" and memfd.returncode == -9
    assert memfd.memory_peak is not None and memfd.memory_peak <= 256 << 20
    shm = box.run(SHM_FILES, timeout_s=10)  # /dev/shm may hold 512 MiB: the cgroup stops it
    assert shm.status == "killed" and shm.memory_peak <= 256 << 20, shm.stdout


@needs_bwrap
def test_without_a_cgroup_the_per_process_bound_holds() -> None:
    """The fallback: nproc processes of memory_bytes each, three tmpfs, no uncounted memory."""
    box = Sandbox(Limits(memory_bytes=256 << 20, tmp_bytes=32 << 20, nproc=8))
    box.cgroups = None  # as on a host where no cgroup can be made
    memfd = box.run(MEMFDS, timeout_s=10)
    assert memfd.stdout == "refused 1\n", memfd.stderr  # EPERM: memfd is not counted by rlimits
    sysv = box.run(
        "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.shmget(0, 1 << 20, 0o1600), errno.errorcode[ctypes.get_errno()])\n",
        timeout_s=5,
    )
    assert sysv.stdout == "-1 EPERM\n", sysv.stderr
    shm = box.run(SHM_FILES, timeout_s=10)
    assert shm.stdout == "refused 28\nshm files 3\n"  # ENOSPC at the 32 MiB tmpfs
    forks = box.run(
        "import os, time\nn = 0\ntry:\n    while n < 30:\n        if os.fork() == 0:\n"
        "            time.sleep(2)\n            os._exit(0)\n        n += 1\n"
        "except OSError:\n    pass\nprint(n)\n",
        timeout_s=10,
    )
    assert int(forks.stdout) <= 8  # so at most 8 x 256 MiB of address space, + 3 x 32 MiB
    one = box.run("b = bytearray(300 << 20)", timeout_s=5)
    assert one.status == "failed" and "MemoryError" in one.stderr


def test_run_cgroups_get_the_limits(tmp_path: Path) -> None:
    """What is written where: v2 (one directory) and v1 (memory and pids directories)."""
    limits = Limits(memory_bytes=300 << 20, nproc=7)
    v2 = tmp_path / "v2"
    v2.mkdir()
    run = sandbox._CgroupRoot("v2", (str(v2),)).create(limits)
    (d,) = (Path(p) for p in run.dirs)
    assert (d / "memory.max").read_text() == str(300 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == str(7 + sandbox._HELPER_PROCS)
    mem, pids = tmp_path / "memory", tmp_path / "pids"
    mem.mkdir(), pids.mkdir()
    run = sandbox._CgroupRoot("v1", (str(mem), str(pids))).create(limits)
    m, p = (Path(x) for x in run.dirs)
    assert (m / "memory.limit_in_bytes").read_text() == str(300 << 20)
    assert (p / "pids.max").read_text() == str(7 + sandbox._HELPER_PROCS)
    for f in (d / "memory.max", d / "memory.swap.max", d / "pids.max"):
        f.unlink()
    run2 = sandbox._RunCgroup([str(d)], True)
    assert run2.remove() is None and not d.exists()


def test_where_run_cgroups_go(tmp_path: Path) -> None:
    """Pure cgroup v2 (the nearest ancestor that delegates memory and pids), hybrid v1."""
    root = tmp_path / "cg"
    (root / "user.slice" / "session.scope").mkdir(parents=True)
    (root / "cgroup.subtree_control").write_text("cpu memory pids\n")
    (root / "user.slice" / "cgroup.subtree_control").write_text("memory pids\n")
    (root / "user.slice" / "session.scope" / "cgroup.subtree_control").write_text("\n")
    mountinfo = f"30 20 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw\n"
    own = sandbox._parse_proc_cgroup("0::/user.slice/session.scope\n")
    found = sandbox._cgroup_candidates(sandbox._parse_mountinfo(mountinfo), own, "")
    assert found == [sandbox._CgroupRoot("v2", (str(root / "user.slice"),))]
    # hybrid: memory and pids as v1 hierarchies, cgroup v2 without controllers
    (tmp_path / "memory" / "job").mkdir(parents=True)
    (tmp_path / "pids").mkdir()
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.subtree_control").write_text("\n")
    mountinfo = (
        f"31 20 0:27 / {tmp_path}/memory rw - cgroup cgroup rw,memory\n"
        f"32 20 0:28 / {tmp_path}/pids rw - cgroup cgroup rw,pids\n"
        f"33 20 0:29 / {tmp_path}/unified rw - cgroup2 cgroup2 rw\n"
    )
    own = sandbox._parse_proc_cgroup("8:pids:/\n4:memory:/job\n0::/\n")
    found = sandbox._cgroup_candidates(sandbox._parse_mountinfo(mountinfo), own, "")
    expected = sandbox._CgroupRoot("v1", (str(tmp_path / "memory" / "job"), str(tmp_path / "pids")))
    assert found == [expected]
    assert sandbox._cgroup_candidates([], {}, "/given") == [sandbox._CgroupRoot("v2", ("/given",))]


# -- the kernel's attack surface: seccomp and namespaces ------------------------------------

#: (system call, arguments, the errno expected) tried through libc's syscall().
SYSCALLS = {
    "ptrace": ((16, 1, 0, 0), "EPERM"),  # PTRACE_ATTACH to init
    "keyctl": ((0, -3, 0), "EPERM"),  # KEYCTL_GET_KEYRING_ID of the session keyring
    "add_key": ((0, 0, 0, 0, 0), "EPERM"),
    "request_key": ((0, 0, 0, 0), "EPERM"),
    "mount": ((0, 0, 0, 0, 0), "EPERM"),
    "umount2": ((0, 0), "EPERM"),
    "bpf": ((0, 0, 0), "EPERM"),
    "perf_event_open": ((0, 0, -1, -1, 0), "EPERM"),
    "unshare": ((0x10000000,), "EPERM"),  # CLONE_NEWUSER
    "setns": ((0, 0), "EPERM"),
    "clone": ((0x10000000 | 17, 0, 0, 0, 0), "EPERM"),  # CLONE_NEWUSER | SIGCHLD
    "clone3": ((0, 0), "ENOSYS"),
    "userfaultfd": ((0,), "EPERM"),
    "io_uring_setup": ((1, 0), "EPERM"),
    "kexec_load": ((0, 0, 0, 0), "EPERM"),
    "init_module": ((0, 0, 0), "EPERM"),
    "process_vm_readv": ((1, 0, 0, 0, 0, 0), "EPERM"),
}


def syscall_probe(names: list[str]) -> str:
    numbers = sandbox._ARCHES[sandbox._machine()][1]
    calls = {n: (numbers[n], SYSCALLS[n][0]) for n in names}
    return (
        "import ctypes, errno, subprocess, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"for name, (nr, args) in {calls!r}.items():\n"
        "    r = libc.syscall(*[ctypes.c_long(v) for v in (nr, *args)])\n"
        "    print(name, r, errno.errorcode.get(ctypes.get_errno()))\n"
        # what a solution does still works: threads (clone3 falls back to clone), processes
        "t = threading.Thread(target=print, args=('thread ran',))\nt.start()\nt.join()\n"
        "print(subprocess.run(['true']).returncode)\n"
        "p = subprocess.run(['unshare', '-U', '-r', 'true'], stderr=subprocess.PIPE)\n"
        "print(p.returncode)\n"
    )


@needs_bwrap
@pytest.mark.skipif(sandbox._machine() not in sandbox._ARCHES, reason="no filter here")
def test_seccomp_denies_what_a_solution_never_needs() -> None:
    result = Sandbox().run(syscall_probe(list(SYSCALLS)), timeout_s=10)
    assert result.status == "ok", result.stderr
    lines = result.stdout.splitlines()
    got = {line.split()[0]: (line.split()[1], line.split()[2]) for line in lines[: len(SYSCALLS)]}
    assert got == {name: ("-1", errno_name) for name, (_, errno_name) in SYSCALLS.items()}
    assert lines[len(SYSCALLS) :] == ["thread ran", "0", "1"]  # unshare -Ur: refused


@needs_bwrap
def test_no_user_namespace_root_inside() -> None:
    """``unshare -U -r`` gave uid 0 with every capability inside, and a tmpfs of any size."""
    code = (
        "import subprocess\n"
        "for cmd in (['id', '-u'], ['--mount', 'sh', '-c', 'mount -t tmpfs none /tmp; id -u']):\n"
        "    p = subprocess.run(['unshare', '-U', '-r', *cmd], capture_output=True,"
        " text=True)\n"
        "    print(p.returncode, p.stdout.strip() or '-', p.stderr.strip()[:80])\n"
    )
    result = Sandbox().run(code, timeout_s=10)
    assert result.status == "ok", result.stderr
    for line in result.stdout.splitlines():
        returncode, uid, said = line.split(" ", 2)
        assert returncode != "0" and uid == "-", result.stdout
        assert "Operation not permitted" in said


def test_filter_tables_match_the_kernel_abi() -> None:
    """Our numbers against libseccomp's resolver (a different source of the same ABI)."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("no libseccomp here to cross-check against")
    resolve = lib.seccomp_syscall_resolve_name_arch
    resolve.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    for arch, (audit, numbers) in sandbox._ARCHES.items():
        for name, nr in numbers.items():
            assert resolve(audit, name.encode()) == nr, (arch, name)
        denied = sandbox.seccomp._DENIED + sandbox._DENIED_UNACCOUNTED
        for name in denied:  # none left out by mistake
            assert name in numbers or resolve(audit, name.encode()) < 0, (arch, name)


def test_filter_program_shape() -> None:
    accounted = sandbox.seccomp_filter("x86_64")
    fallback = sandbox.seccomp_filter("x86_64", accounted=False)
    assert len(accounted) % 8 == 0 and len(accounted) // 8 < 4096  # BPF_MAXINSNS
    assert len(fallback) == len(accounted) + 3 * 2 * 8  # memfd_create, memfd_secret, shmget
    assert sandbox.seccomp_filter("aarch64") != accounted
    assert sandbox.seccomp_filter("mips") == b""
    code, _jt, _jf, k = struct.unpack("=HBBI", accounted[8:16])
    assert (code, k) == (0x15, 0xC000003E)  # the arch check comes first


KEYCTL_READ, KEYCTL_UPDATE, KEYCTL_REVOKE = 11, 2, 3


@pytest.fixture
def parent_key() -> tuple[int, str]:
    """A key in this process's session keyring (as a user's credentials would be)."""
    libc = ctypes.CDLL(None, use_errno=True)
    numbers = sandbox._ARCHES.get(sandbox._machine())
    if numbers is None:
        pytest.skip("unknown architecture")
    desc = f"teachgym-test-{uuid.uuid4().hex}"
    L = ctypes.c_long
    key = libc.syscall(
        L(numbers[1]["add_key"]), b"user", desc.encode(), b"hunter2", L(7), L(-3)
    )  # fmt: skip
    if key < 0:
        pytest.skip(f"no session keyring to test with (errno {ctypes.get_errno()})")
    yield key, desc
    libc.syscall(L(numbers[1]["keyctl"]), L(KEYCTL_REVOKE), L(key))


def read_key(key: int) -> bytes:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(64)
    n = libc.syscall(
        ctypes.c_long(sandbox._ARCHES[sandbox._machine()][1]["keyctl"]),
        ctypes.c_long(KEYCTL_READ), ctypes.c_long(key), buf, ctypes.c_long(64),
    )  # fmt: skip
    return buf.raw[: max(n, 0)]


def keyring_attack(key: int, desc: str) -> str:
    numbers = sandbox._ARCHES[sandbox._machine()][1]
    return (
        "import ctypes, errno\n"
        "libc = ctypes.CDLL(None, use_errno=True)\nL = ctypes.c_long\n"
        "buf = ctypes.create_string_buffer(64)\n"
        f"r = libc.syscall(L({numbers['keyctl']}), L({KEYCTL_READ}), L({key}), buf, L(64))\n"
        "print('read', r, buf.raw[:7])\n"
        f"r = libc.syscall(L({numbers['keyctl']}), L({KEYCTL_UPDATE}), L({key}), b'pwned', L(5))\n"
        "print('update', r)\n"
        f"r = libc.syscall(L({numbers['add_key']}), b'user', b'left-behind', b'x', L(1), L(-3))\n"
        "print('add', r)\n"
        f"print('listed', {desc!r} in open('/proc/keys').read())\n"
    )


@needs_bwrap
def test_the_parents_keyring_is_out_of_reach(parent_key: tuple[int, str]) -> None:
    key, desc = parent_key
    before = Path("/proc/keys").read_text().count("left-behind")
    result = Sandbox().run(keyring_attack(key, desc), timeout_s=5)
    assert result.status == "ok", result.stderr
    assert result.stdout.splitlines() == [
        "read -1 b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00'", "update -1", "add -1", "listed False",
    ]  # fmt: skip
    assert read_key(key) == b"hunter2"  # intact
    assert Path("/proc/keys").read_text().count("left-behind") == before  # nothing left


@needs_bwrap
def test_a_fresh_session_keyring_even_where_keyctl_is_allowed(
    parent_key: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second layer: with the key calls let through, the parent's keyring is not possessed."""
    key, desc = parent_key
    denied = tuple(
        n for n in sandbox.seccomp._DENIED if n not in ("keyctl", "add_key", "request_key")
    )
    monkeypatch.setattr(sandbox.seccomp, "_DENIED", denied)
    sandbox.seccomp_filter.cache_clear()
    try:
        result = Sandbox().run(keyring_attack(key, desc), timeout_s=5)
    finally:
        monkeypatch.undo()
        sandbox.seccomp_filter.cache_clear()
    assert result.status == "ok", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("read -1") and lines[1] == "update -1"
    assert lines[3] == "listed False"
    assert int(lines[2].split()[1]) > 0  # a key was added, to the run's own keyring...
    assert read_key(key) == b"hunter2"
    assert "left-behind" not in Path("/proc/keys").read_text()  # ...which died with the run


# -- clean-up never follows a link, never recurses, never raises ----------------------------

#: Breaks a naive clean-up: 1,200 nested directories (RecursionError in a recursive
#: removal), a link to a host file and one to a host directory at the bottom,
#: and directories the program made unreadable on the way down.
BREAK_CLEANUP = (
    "import os, sys\n"
    "host_file, host_dir = sys.argv[1], sys.argv[2]\n"
    "os.makedirs('d', exist_ok=True)\n"
    "os.chdir('d')\n"
    "for i in range(1200):\n"
    "    os.mkdir('d')\n"
    "    os.chdir('d')\n"
    "os.symlink(host_file, 'file-link')\n"
    "os.symlink(host_dir, 'dir-link')\n"
    "os.chdir('/'.join(['..'] * 601))\n"
    "os.chmod('d', 0)\n"
    "os.chmod('.', 0o500)\n"
    "print('built')\n"
)


def host_victims(where: Path) -> tuple[Path, Path]:
    where.mkdir(mode=0o755, parents=True, exist_ok=True)
    victim, victim_dir = where / "victim.txt", where / "victim-dir"
    victim.write_text("mine")
    victim.chmod(0o644)
    victim_dir.mkdir(mode=0o755)
    (victim_dir / "inside.txt").write_text("mine too")
    return victim, victim_dir


def victims_intact(victim: Path, victim_dir: Path) -> bool:
    return (
        victim.read_text() == "mine"
        and stat.S_IMODE(victim.stat().st_mode) == 0o644
        and stat.S_IMODE(victim_dir.stat().st_mode) == 0o755
        and (victim_dir / "inside.txt").read_text() == "mine too"
    )


def deep_tree(top: Path, victim: Path, victim_dir: Path) -> None:
    """The same tree BREAK_CLEANUP builds, made here (for the remover alone)."""
    d = top
    for _ in range(1200):
        d = d / "d"
        os.mkdir(d)  # pathlib's mkdir would stat the long path at every level
    os.symlink(victim, d / "file-link")
    os.symlink(victim_dir, d / "dir-link")
    mid = top.joinpath(*["d"] * 600)
    os.chmod(mid, 0)
    os.chmod(mid.parent, 0o500)


def as_unprivileged(fn: Callable[[], dict]) -> dict:
    """Run ``fn`` in a child process as the unprivileged id 65534; its returned dict."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, report, exit without pytest's teardown
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            for cached in (sandbox._cgroup_root, sandbox._probe, sandbox._site_dirs):
                cached.cache_clear()
            out = fn()
        except BaseException as e:  # report anything, as data
            out = {"error": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="teachgym-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_remove_tree_as_root_and_as_a_user(open_dir: Path) -> None:
    tmp_path = open_dir

    def remove_one(owner_dir: Path) -> dict:
        victim, victim_dir = host_victims(owner_dir / "host")
        top = owner_dir / "scratch"
        top.mkdir()
        deep_tree(top, victim, victim_dir)
        problem = sandbox._remove_tree(str(top))
        return {
            "problem": problem,
            "gone": not top.exists(),
            "intact": victims_intact(victim, victim_dir),
        }

    as_root = remove_one(tmp_path / "root-owned")
    assert as_root == {"problem": None, "gone": True, "intact": True}
    user_dir = tmp_path / "user-owned"
    user_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(user_dir, 65534, 65534)
    as_user = as_unprivileged(lambda: remove_one(user_dir))
    assert as_user == {"problem": None, "gone": True, "intact": True}


def test_remove_tree_never_raises(tmp_path: Path) -> None:
    assert sandbox._remove_tree(str(tmp_path / "never-existed")) is None
    link = tmp_path / "link"
    link.symlink_to(tmp_path)  # the scratch directory itself replaced by a link
    assert "non-directory" in (sandbox._remove_tree(str(link)) or "")
    assert not link.is_symlink() and tmp_path.is_dir()
    assert "FileNotFoundError" in (sandbox._remove_tree("/nonexistent/dir/x") or "")


def unsafe_cleanup_batch(victims: Path, python: str) -> dict:
    victim, victim_dir = host_victims(victims)
    tempfile.tempdir = str(victims)
    try:
        pool = SandboxPool(2, bwrap="/nonexistent/bwrap", unsafe=True, python=python)
        sandbox.box._warned_unsafe = True
        codes = ["print('before')", BREAK_CLEANUP, "print('after')"]
        args = [str(victim), str(victim_dir)]
        results = pool.map_with(lambda box, c: box.run(c, timeout_s=20, args=args), codes)
    finally:
        tempfile.tempdir = None
    left = [p.name for p in victims.iterdir() if p.name.startswith("teachgym-sandbox-")]
    return {
        "out": [r.stdout for r in results],
        "status": [r.status for r in results],
        "left": left,
        "intact": victims_intact(victim, victim_dir),
    }


@needs_usable_python
def test_a_program_that_breaks_cleanup_fails_only_itself(open_dir: Path) -> None:
    """Unsafe mode (a host scratch directory), as root and as an ordinary user."""
    tmp_path = open_dir
    expected = {
        "out": ["before\n", "built\n", "after\n"],
        "status": ["ok", "ok", "ok"],
        "left": [],
        "intact": True,
    }
    as_root = unsafe_cleanup_batch(tmp_path / "root-run", usable_python() or "")
    assert as_root == expected
    user_dir = tmp_path / "user-run"
    user_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(user_dir, 65534, 65534)
        python = "/usr/bin/python3"
        if not sandbox._world_usable(python):
            pytest.skip("no interpreter the unprivileged id can run")
    else:
        python = sys.executable
    as_user = as_unprivileged(lambda: unsafe_cleanup_batch(user_dir / "victims", python))
    assert as_user == expected


@needs_bwrap
def test_an_isolated_run_leaves_nothing_on_the_host_disk(scratch_root: Path) -> None:
    result = Sandbox().run(BREAK_CLEANUP, timeout_s=20, args=["/etc/hostname", "/etc"])
    assert result.status == "ok" and result.stdout == "built\n", result.stderr
    assert list(scratch_root.iterdir()) == []  # the tree was in the run's tmpfs
