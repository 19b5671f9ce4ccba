"""Process helpers of a run: waiting for an exit, killing what is left, reading what
bwrap and the program wrote."""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import subprocess
import time
import warnings
from typing import IO

from teachgym.sandbox.limits import _REAP_S


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
    polls with sleeps growing to 50 ms instead, as long as a short sandboxed
    program runs (docs/decisions.md).
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
