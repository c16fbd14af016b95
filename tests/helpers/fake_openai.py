"""A real HTTP server on loopback that speaks the OpenAI (chat) completions protocol, for tests.

It answers ``POST <anything>/chat/completions`` and ``POST <anything>/completions`` with a reply
computed by ``answer(body)`` (the request's JSON body: messages or prompt, seed, ...); with
``chat_template=False`` it serves a base model, as vLLM does: chat requests get HTTP 400. It can
be scripted to misbehave first: each entry
of ``faults`` is consumed by one request, in arrival order: an int HTTP status (429, 500, 401,
...), ``"stall"`` (sleep ``stall_s`` before answering normally), ``"garbage"`` (a non-JSON 200
reply) or ``None`` (answer normally). ``fail_after`` makes every request after the first N
answer with that status (to interrupt a run). Every request is logged with its arrival time.
"""
from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from collections.abc import Callable
from typing import Any, Self


@dataclasses.dataclass
class Logged:
    t: float  # time.monotonic() at arrival
    path: str
    body: dict[str, Any]
    auth: str | None
    status: int = 200


class FakeOpenAI:
    """Use as a context manager; ``base_url`` is ``http://127.0.0.1:<port>/v1``."""

    def __init__(self, answer: Callable[[dict[str, Any]], str] | None = None, *,
                 faults: list[Any] | None = None, stall_s: float = 2.0, delay_s: float = 0.0,
                 fail_after: tuple[int, int] | None = None, echo_auth_in_errors: bool = False,
                 chat_template: bool = True):
        self.answer = answer or (lambda body: "hello")
        self.faults = list(faults or [])
        self.stall_s = stall_s
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.echo_auth_in_errors = echo_auth_in_errors
        self.chat_template = chat_template
        self.log: list[Logged] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> Self:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                fake._handle(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def ok_requests(self) -> list[Logged]:
        return [r for r in self.log if r.status == 200]

    # -- one request --------------------------------------------------------------------
    def _send(self, h: http.server.BaseHTTPRequestHandler, status: int, payload: bytes,
              headers: dict[str, str] | None = None) -> None:
        # No longer in flight once its reply starts: the client may send its next request as
        # soon as the reply arrives, before this thread would get back to count it out.
        self._leave(h)
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        try:
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): fine

    def _leave(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """Count request `h` out of the in-flight ones (once)."""
        with self.lock:
            if getattr(h, "in_flight", False):
                h.in_flight = False
                self.in_flight -= 1

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        t = time.monotonic()
        length = int(h.headers.get("Content-Length", 0))
        body = json.loads(h.rfile.read(length) or b"{}")
        entry = Logged(t, h.path, body, h.headers.get("Authorization"))
        with self.lock:
            self.log.append(entry)
            index = len(self.log) - 1
            fault = self.faults.pop(0) if self.faults else None
            if self.fail_after is not None and index >= self.fail_after[0]:
                fault = self.fail_after[1]
            self.in_flight += 1
            h.in_flight = True
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            chat = h.path.endswith("/chat/completions")
            if not h.path.endswith("/completions"):
                entry.status = 404
                return self._send(h, 404, b'{"error": {"message": "no such route"}}')
            if chat and not self.chat_template:
                entry.status = 400
                return self._send(h, 400, b'{"error": {"message": "As of transformers v4.44, '
                                          b'default chat template is no longer allowed"}}')
            if isinstance(fault, int):
                entry.status = fault
                msg = f"scripted {fault}"
                if self.echo_auth_in_errors and entry.auth:
                    msg += f": incorrect key {entry.auth.removeprefix('Bearer ')}"
                headers = {"Retry-After": "0"} if fault == 429 else {}
                return self._send(h, fault, json.dumps({"error": {"message": msg}}).encode(),
                                  headers)
            if fault == "stall":
                time.sleep(self.stall_s)
            if fault == "garbage":
                entry.status = 299
                return self._send(h, 200, b"<html>oops</html>")
            if self.delay_s:
                time.sleep(self.delay_s)
            text = self.answer(body)
            choice = ({"message": {"role": "assistant", "content": text}} if chat
                      else {"text": text})
            reply = {
                "id": f"cmpl-{index}", "object": "chat.completion" if chat else "text_completion",
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop", **choice}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()),
                          "total_tokens": 10 + len(text.split())},
            }
            if fault == "stall":
                entry.status = 408  # the client had given up long before: not a served reply
            self._send(h, 200, json.dumps(reply).encode())
        finally:
            self._leave(h)
