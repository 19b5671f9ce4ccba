"""The seccomp filter every run installs (see the package docstring for what it denies)."""

from __future__ import annotations

import errno
import functools
import platform
import struct

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
