"""A real OpenAI-compatible chat-completions server for judge tests (http.server in a thread
on 127.0.0.1): deterministic scores, and the failures a judge must survive or report."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def expected_score(prompt: str) -> float:
    """The server's deterministic score of a prompt."""
    return float(int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 101)


@dataclass
class Server:
    """What the fake endpoint does: `mode` for every request, after `fail_first` requests
    answered with `fail_status` (and `retry_after`). In `number` mode the reply is the
    scorer's number, or `REFUSAL` when it returns None; in `logprobs` mode the first token's
    top logprobs are `top`."""

    url: str = ""
    mode: str = "number"
    fail_first: int = 0
    fail_status: int = 429
    retry_after: str | None = None
    delay: float = 0.0
    scorer: Callable[[str], float | None] = field(default=lambda prompt: expected_score(prompt))
    top: list[tuple[str, float]] = field(default_factory=lambda: [("80", 0.75), ("40", 0.25), ("Sure", 1e-3)])
    writer: Callable[[list[dict]], str | None] | None = None  # a reply text for the messages, else None: scored
    requests: list[dict] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(name="server")
def server_fixture() -> Iterator[Server]:
    """Import `server_fixture` into a test module to get the `server` fixture."""
    with serve() as state:
        yield state


@contextmanager
def serve() -> Iterator[Server]:
    """The server running on a free port for the `with` block (benches use it directly)."""
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                state.times.append(time.monotonic())
                n = len(state.requests)
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                time.sleep(state.delay)
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                if n <= state.fail_first:
                    headers = {"Retry-After": state.retry_after} if state.retry_after else {}
                    return self._send(state.fail_status, b'{"error": "busy"}', headers)
                if state.mode == "garbage":
                    return self._send(200, b"<html>proxy error</html>")
                if state.mode == "no_choices":
                    return self._send(200, b'{"id": "x", "object": "chat.completion"}')
                written = None if state.writer is None else state.writer(body["messages"])
                score = state.scorer(body["messages"][0]["content"]) if state.mode == "number" and written is None else 0
                content = written if written is not None else {"number": "REFUSAL" if score is None else str(int(score)),
                                                               "words": "I would say it is fine"}.get(state.mode, "0")
                choice: dict = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                if state.mode == "logprobs" and body.get("logprobs"):
                    token, p = max(state.top, key=lambda tp: tp[1])
                    choice["logprobs"] = {"content": [{"token": token, "logprob": math.log(p), "top_logprobs": [
                        {"token": t, "logprob": math.log(q)} for t, q in state.top]}]}
                self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": [choice]}).encode(),
                           {"Content-Type": "application/json"})
            finally:
                with state.lock:
                    state.in_flight -= 1

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
