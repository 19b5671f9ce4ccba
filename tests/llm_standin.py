"""A stand-in for an OpenAI-compatible chat server, for tests only.

It is not a model: it answers ``POST /v1/chat/completions`` from a script of canned
responses (good JSON, malformed JSON, empty or cut replies, HTTP errors, slow replies)
and records every request body, so tests drive the real client and the real ``openai``
SDK over real HTTP and can check what was sent. It listens on 127.0.0.1 only, on a free
port, in a background thread.

    with StandIn([reply('{"x": 1}'), status(429)]) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, api_key="EMPTY")
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    """One canned response. With ``match`` it answers only a request whose last user
    message contains that substring (so concurrent tests need not guess arrival order)."""

    text: str | None = None
    finish_reason: str = "stop"
    status: int = 200
    delay_s: float = 0.0
    match: str | None = None
    prompt_tokens: int = 7
    completion_tokens: int = 5


def reply(text: str, finish_reason: str = "stop", **kw: Any) -> Scripted:
    return Scripted(text=text, finish_reason=finish_reason, **kw)


def json_reply(obj: Any, **kw: Any) -> Scripted:
    return Scripted(text=json.dumps(obj), **kw)


def status(code: int, **kw: Any) -> Scripted:
    return Scripted(status=code, **kw)


def slow(text: str, delay_s: float, **kw: Any) -> Scripted:
    return Scripted(text=text, delay_s=delay_s, **kw)


def empty(**kw: Any) -> Scripted:
    return Scripted(text="", **kw)


def cut(text: str = '{"value": 1, "reason": "thi', **kw: Any) -> Scripted:
    return Scripted(text=text, finish_reason="length", **kw)


class StandIn:
    """The scripted server. ``requests`` holds every chat request body received, in
    arrival order; a request that finds no script entry left gets HTTP 418 and is
    counted in ``unscripted`` (418 so that it is not retried and shows up plainly)."""

    model_id = "stand-in-model"

    def __init__(self, script: Iterable[Scripted] = ()) -> None:
        self._script: list[Scripted] = list(script)
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.unscripted = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True  # a slow reply must not hold up shutdown
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def add(self, *entries: Scripted) -> None:
        with self._lock:
            self._script.extend(entries)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def start(self) -> StandIn:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take(self, body: dict[str, Any]) -> Scripted | None:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        last = str(users[-1].get("content", "")) if users else ""
        with self._lock:
            self.requests.append(body)
            keyed = [i for i, e in enumerate(self._script) if e.match and e.match in last]
            loose = [i for i, e in enumerate(self._script) if e.match is None]
            for i in keyed[:1] or loose[:1]:
                return self._script.pop(i)
            self.unscripted += 1
            return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout) before we answered

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    model = {"id": standin.model_id, "object": "model", "owned_by": "stand-in"}
                    self._send(200, {"object": "list", "data": [model]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                entry = standin._take(body)
                if entry is None:
                    self._send(418, {"error": {"message": "stand-in: script exhausted"}})
                    return
                if entry.delay_s:
                    time.sleep(entry.delay_s)
                if entry.status != 200:
                    error = {"message": f"stand-in HTTP {entry.status}", "code": entry.status}
                    self._send(entry.status, {"error": error})
                    return
                self._send(200, _completion(body, entry))

        return Handler


def _completion(body: dict[str, Any], entry: Scripted) -> dict[str, Any]:
    message = {"role": "assistant", "content": entry.text}
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", StandIn.model_id),
        "choices": [{"index": 0, "message": message, "finish_reason": entry.finish_reason}],
        "usage": {
            "prompt_tokens": entry.prompt_tokens,
            "completion_tokens": entry.completion_tokens,
            "total_tokens": entry.prompt_tokens + entry.completion_tokens,
        },
    }
