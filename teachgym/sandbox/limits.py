"""The sandbox's shared vocabulary: a run's :class:`Limits`, its :class:`SandboxResult`,
:class:`SandboxUnavailable` and the constants every part of a run agrees on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from teachgym.errors import UserError

Status = Literal["ok", "failed", "killed", "timeout", "error"]

#: Where a run's working directory appears inside the sandbox (also ``$HOME``).
WORKDIR = "/sandbox"
#: Private user ids (used when the parent is root) are drawn from
#: ``[_UID_BASE, _UID_BASE + _UID_SPAN)``: far above any real account, below
#: 2**31 so every tool parses them as a signed int.
_UID_BASE = 1_500_000_000
_UID_SPAN = 1 << 24
#: How long a run waits for the killed namespace's init (or cgroup) to be gone.
_REAP_S = 5.0
#: Processes of a run besides the program's: the outer bwrap and the namespace's init.
_HELPER_PROCS = 2
#: The bootstrap's own failures (limits, seccomp) exit with this status and a
#: line starting with this prefix, which makes the run an ``"error"``.
_BOOT_EXIT = 125
_BOOT_PREFIX = "teachgym-sandbox:"


class SandboxUnavailable(UserError, RuntimeError):
    """OS isolation (bubblewrap) cannot run here and ``unsafe=True`` was not given,
    or an unsafe run would have to run as root.

    A :class:`~teachgym.errors.UserError`: the CLI prints its one line (which
    names the cause) and exits 2 instead of showing a traceback."""


@dataclass(frozen=True)
class Limits:
    """Resource bounds of one run (each enforced by the kernel).

    Attributes:
        cpu_s: CPU seconds per process (``SIGXCPU`` past it); ``None``: the
            run's timeout rounded up, plus one.
        memory_bytes: memory of the run: the address space of each process
            (a Python allocation past it raises ``MemoryError``) and, where
            the run has a cgroup, the memory of all its processes together
            (RAM, tmpfs, shared memory, memfd, page cache; past it the kernel
            kills a process of the run).
        nproc: processes (and threads) the run may have at once.
        file_bytes: the largest file the run may write (stdout and memfds
            included); ``SIGXFSZ`` past it.
        nofile: open file descriptors per process.
        tmp_bytes: size of each of the run's private tmpfs: the working
            directory ``/sandbox``, ``/tmp`` and ``/dev/shm``.
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
    """What one sandboxed run did. See the package docstring for ``status``."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    #: True when the run was isolated by bwrap, False for an ``unsafe`` run.
    isolated: bool = field(default=True)
    #: The most memory the run's cgroup held at once, in bytes (None without a cgroup).
    memory_peak: int | None = None

    @property
    def passed(self) -> bool:
        """Exit code 0 within the timeout: what a test harness counts as a pass."""
        return self.status == "ok"
