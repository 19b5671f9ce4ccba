"""One sandboxed run: starting it (under bwrap, or unsafe), waiting, killing what is left,
reading its result and cleaning up."""

from __future__ import annotations

import math
import os
import random
import subprocess
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from teachgym.sandbox.bootstrap import _BOOTSTRAP
from teachgym.sandbox.bwrap import _bwrap_argv
from teachgym.sandbox.cgroups import _CgroupRoot, _joining, _RunCgroup
from teachgym.sandbox.limits import (
    _BOOT_EXIT,
    _BOOT_PREFIX,
    _UID_BASE,
    _UID_SPAN,
    WORKDIR,
    Limits,
    SandboxResult,
    Status,
)
from teachgym.sandbox.procs import (
    _await_gone,
    _kill_uid,
    _killpg,
    _own_process_count,
    _read_bounded,
    _read_status,
    _wait_exit,
)
from teachgym.sandbox.scratch import _make_scratch, _remove_tree
from teachgym.sandbox.seccomp import _keyctl_number, seccomp_filter


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


def _environment(home: str) -> dict[str, str]:
    """The whole environment of a run's program (nothing of the caller's is passed on)."""
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}


def _boot_argv(
    config: _Config, uid: int, timeout_s: float, pass_fds: list[int], args: list[str]
) -> list[str]:
    """The command line that runs :data:`_BOOTSTRAP` and then ``main.py`` with ``args``."""
    limits = config.limits
    # RLIMIT_NPROC counts every process of the real user id: a private id has none
    # besides the run's; otherwise the limit comes on top of what the user runs
    nproc = limits.nproc if uid >= 0 else limits.nproc + _own_process_count()
    cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(timeout_s) + 1
    bpf = seccomp_filter(accounted=config.cgroups is not None)
    keep = ",".join(str(fd) for fd in pass_fds)
    boot = [config.python, "-I", "-S", "-c", _BOOTSTRAP]
    boot += [str(v) for v in (uid, nproc, cpu, limits.memory_bytes, limits.file_bytes)]
    boot += [str(limits.nofile), str(_keyctl_number()), bpf.hex(), keep]
    boot += ["\n".join(config.site_dirs), "main.py", *args]
    return boot


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
        boot = _boot_argv(config, uid, timeout_s, pass_fds, args)
        # owned by the run, closed by _release
        out, err, inp = (tempfile.TemporaryFile() for _ in range(3))  # noqa: SIM115
        self.files = [out, err, inp]
        inp.write(stdin.encode())
        inp.seek(0)
        fds = list(pass_fds)
        if isolated:
            assert config.bwrap is not None
            source = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _release)
            self.files.append(source)
            source.write(code.encode())
            source.seek(0)
            self.status_r, status_w = os.pipe()
            fds += [status_w, source.fileno()]
            env = _environment(WORKDIR)
            argv = _bwrap_argv(
                config.bwrap, config.python, limits.tmp_bytes, env, status_w, source.fileno()
            )
            argv += boot
            cwd = "/"
        else:
            top, cwd = _make_scratch(code, uid)
            self.scratch = top
            env = _environment(cwd)
            argv = boot
        if config.cgroups is not None:
            self.cgroup = config.cgroups.create(limits)
            # join the run's cgroup before becoming bwrap: nothing of the run starts outside it
            argv = _joining(self.cgroup, argv)
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
