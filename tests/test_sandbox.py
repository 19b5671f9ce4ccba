"""The sandbox contains hostile programs, and the host is unharmed afterwards.

Every containment case checks both sides: the attack was really attempted
inside (the program reports that it ran, got ``os``, reached libc...), and
outside nothing changed (files intact, no connection arrived, no process of
the run left, the host can still fork).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from teachgym import sandbox
from teachgym.sandbox import (
    Limits,
    Sandbox,
    SandboxPool,
    SandboxUnavailable,
    isolation_available,
    run_python,
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
    assert result.wall_s < 5


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
    assert "tmp holds [] False" in result.stdout
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


def test_without_isolation_running_needs_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "/nonexistent/bwrap"
    assert not isolation_available(missing)
    with pytest.raises(SandboxUnavailable, match="unsafe=True"):
        Sandbox(bwrap=missing)
    with pytest.raises(SandboxUnavailable, match="unsafe=True"):
        SandboxPool(2, bwrap=missing)
    monkeypatch.setattr(sandbox, "_warned_unsafe", False)
    box = Sandbox(bwrap=missing, unsafe=True)
    with pytest.warns(RuntimeWarning, match="WITHOUT"):
        result = box.run("import os\nprint(os.getcwd() != '/sandbox')", timeout_s=3)
    assert (result.status, result.stdout, result.isolated) == ("ok", "True\n", False)


def test_unsafe_mode_keeps_timeout_and_limits(
    monkeypatch: pytest.MonkeyPatch, scratch_root: Path
) -> None:
    monkeypatch.setattr(sandbox, "_warned_unsafe", True)
    box = Sandbox(Limits(memory_bytes=256 << 20), bwrap="/nonexistent/bwrap", unsafe=True)
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
    monkeypatch.setattr(sandbox, "_warned_unsafe", True)
    box = Sandbox(bwrap="/nonexistent/bwrap", unsafe=True, python="/usr/bin/python3")
    marker = f"escaped-{uuid.uuid4().hex}"
    code = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"  # out of the process group: killpg cannot reach it
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
        f"{marker!r}])\n"
        "print(os.getuid())\n"
    )
    result = box.run(code, timeout_s=3)
    assert result.status == "ok" and not result.isolated
    assert int(result.stdout) >= sandbox._UID_BASE  # not root: RLIMIT_NPROC applies
    assert alive(pids_with(marker)) == []


@needs_bwrap
def test_run_python_and_isolation_available() -> None:
    assert isolation_available() is True
    result = run_python("print(6 * 7)", timeout_s=3)
    assert (result.stdout, result.isolated) == ("42\n", True)


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
