"""A cgroup per run: finding where this process may make one, making it, killing and
removing it (see the package docstring for what it bounds)."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from typing import Literal

from teachgym.sandbox.limits import _BOOT_EXIT, _BOOT_PREFIX, _HELPER_PROCS, _REAP_S, Limits

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
    """Where run cgroups could go, best first (see the package docstring)."""
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


def _joining(cgroup: _RunCgroup, argv: list[str]) -> list[str]:
    """``argv`` run by a shell that first moves itself into ``cgroup``, so that every
    process of the run starts inside it; a shell that cannot join exits as the
    bootstrap does when it fails (:data:`_BOOT_EXIT`), which makes the run an error."""
    procs = cgroup.procs_files
    script = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(procs)))
    script = f"{{ {script}; }} 2>/dev/null || {{ echo '{_BOOT_PREFIX} cannot join the "
    script += f'run cgroup\' >&2; exit {_BOOT_EXIT}; }}; shift {len(procs)}; exec "$@"'
    return ["/bin/sh", "-c", script, "sh", *procs, *argv]
