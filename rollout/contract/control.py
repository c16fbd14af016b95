"""The control protocol between the learner and the rollout server: JSON lines over two pipes.

The learner starts ``python -m rollout.server --spec=FILE --ctl-in=FD --ctl-out=FD`` through
:class:`RolloutClient`; the server serves the other end through :class:`ServerChannel`. Both
pipes carry one JSON object per line (never stdout, which libraries write to). Bulk data never
travels here: experience goes through the :mod:`.ring_buffer`, weights through the
:mod:`.weight_channel`; the spec file names both segments.

Commands (client -> server), answered in order::

    {"id": 3, "cmd": "rollout", "step": 7, "problem_ids": [...]}  -> experience into the buffer
    {"id": 4, "cmd": "load_weights", "version": 8}                 -> WeightChannel -> engine
    {"id": 5, "cmd": "evaluate", "split": "eval", "max_problems": 0} -> held-out metrics
    {"id": 6, "cmd": "stop"}

Messages (server -> client):

- ``{"type": "ready", "pid", "n_train", "startup_s", "version"}`` once, at start-up;
- ``{"type": "fatal", "message": "<one line>"}`` instead of ``ready`` when start-up fails;
- per command ``{"type": "done", "id", "cmd", "seconds", ...result}`` or
  ``{"type": "error", "id", "cmd", "message": "<one line>"}``;
- ``{"type": "progress", "id", "phase"}`` while a command runs;
- ``{"type": "heartbeat", "t", "busy"}`` every ``heartbeat_s`` from a background thread, so
  the client tells a dead or frozen server from a slow one.

The client waits on replies with a deadline and watches the server's pid and heartbeats: a
crash is a :class:`RolloutServerError` naming the exit status and the last log lines within a
second, a frozen server one within ``heartbeat_timeout_s``. Closing it stops the server
politely, then kills its whole process tree. Every error is one line.
"""
from __future__ import annotations

import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from .procs import descendants, kill_tree

__all__ = ["RolloutClient", "RolloutServerError", "ServerChannel", "jsonable"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class RolloutServerError(RuntimeError):
    """The rollout server died, froze, or failed a command (one-line message)."""


# ------------------------------------------------------------------------------ server side
class ServerChannel:
    """The server's end: JSON lines over two pipe fds; writes are serialised (the heartbeat
    thread shares it)."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        self._in = os.fdopen(fd_in, "r", encoding="utf-8")
        self._fd_out = fd_out
        self._lock = threading.Lock()

    def send(self, msg: Mapping[str, Any]) -> None:
        data = (json.dumps(msg, default=jsonable) + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:
                n = os.write(self._fd_out, view)
                view = view[n:]

    def recv(self) -> dict | None:
        line = self._in.readline()
        if not line:
            return None
        return json.loads(line)


def jsonable(x: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays as Python values, anything else as str."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# ------------------------------------------------------------------------------ client side
class RolloutClient:
    """Starts ``python -m rollout.server`` and exchanges JSON-line commands with it."""

    def __init__(self, spec: Mapping[str, Any], workdir: str | os.PathLike[str], *,
                 startup_timeout_s: float = 600.0, heartbeat_timeout_s: float = 30.0,
                 env: Mapping[str, str] | None = None, tag: str = "") -> None:
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        # `tag` keeps the files of several clients sharing one run directory apart
        self.spec_path = self.workdir / f"rollout_server{tag}.json"
        self.spec_path.write_text(json.dumps(spec, indent=1))
        self.log_path = self.workdir / f"rollout_server{tag}.log"
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._buf = b""
        self._current: str = "start-up"
        self.on_progress = None
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("PYTHONPATH", "")
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), child_env["PYTHONPATH"]) if p)
        child_env.pop("XLA_FLAGS", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held while the server runs
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rollout.server", f"--spec={self.spec_path}",
                 f"--ctl-in={cmd_r}", f"--ctl-out={rep_w}"],
                pass_fds=(cmd_r, rep_w), stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT, env=child_env, start_new_session=True,
                cwd=os.getcwd())  # relative data/template paths mean what they meant to the caller
        finally:
            os.close(cmd_r)
            os.close(rep_w)
        self.pid = self.proc.pid
        self.pgid = self.pid
        self._w = cmd_w
        self._r = rep_r
        self._closed = False
        self._broken = False
        try:
            ready = self._read_until(lambda m: m.get("type") == "ready", startup_timeout_s,
                                     "start-up", heartbeat_timeout_s=None)
        except BaseException:
            self.close()
            raise
        self.ready = ready

    # -- messages
    def _log_tail(self, n: int = 6) -> str:
        try:
            lines = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        lines = [ln for ln in lines if ln.strip() and "WARNING" not in ln][-n:]
        return " | ".join(ln.strip()[:300] for ln in lines)

    def _died(self, what: str) -> RolloutServerError:
        self._broken = True
        rc = self.proc.poll()
        how = (f"was killed by signal {signal.Signals(-rc).name}" if rc is not None and rc < 0
               else f"exited with status {rc}")
        return RolloutServerError(
            f"rollout server (pid {self.pid}) {how} during {what}; log {self.log_path}: "
            f"{self._log_tail()}")

    def _read_until(self, want, timeout: float, what: str,
                    heartbeat_timeout_s: float | None) -> dict:
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                msg = json.loads(line)
                last = time.monotonic()
                kind = msg.get("type")
                if kind == "fatal":
                    raise RolloutServerError(f"rollout server (pid {self.pid}): "
                                             f"{msg.get('message')}; log {self.log_path}")
                if kind == "progress":
                    self._current = f"{what} ({msg.get('phase')})"
                    if self.on_progress is not None:
                        self.on_progress(msg)
                    continue
                if kind == "heartbeat":
                    continue
                if kind in ("done", "error") and msg.get("id") is not None:
                    self._replies[int(msg["id"])] = msg
                if want(msg):
                    return msg
            now = time.monotonic()
            if now >= deadline:
                raise RolloutServerError(f"rollout server (pid {self.pid}): no answer to {what} "
                                         f"within {timeout:.0f}s; log {self.log_path}")
            if heartbeat_timeout_s is not None and now - last > heartbeat_timeout_s:
                self._broken = True
                raise RolloutServerError(
                    f"rollout server (pid {self.pid}) sent no heartbeat for "
                    f"{now - last:.1f}s during {self._current} (frozen or stuck); log "
                    f"{self.log_path}")
            r, _, _ = select.select([self._r], [], [], 0.1)
            if r:
                chunk = os.read(self._r, 1 << 16)
                if chunk:
                    self._buf += chunk
                    continue
                self.proc.wait(timeout=5)  # EOF: the server is gone
                raise self._died(self._current)
            if self.proc.poll() is not None:
                raise self._died(self._current)

    def send(self, cmd: str, **fields: Any) -> int:
        """Queue a command; returns its id (see :meth:`wait`)."""
        if self._closed:
            raise RolloutServerError("rollout server: the client is closed")
        self._next_id += 1
        msg = dict(fields, cmd=cmd, id=self._next_id)
        data = (json.dumps(msg) + "\n").encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._w, view):]
        except BrokenPipeError:
            self.proc.wait(timeout=5)
            raise self._died(f"'{cmd}'") from None
        return self._next_id

    def wait(self, cid: int, timeout: float, what: str = "") -> dict:
        """The reply to command ``cid``; an error reply, death or silence raise."""
        what = what or f"command {cid}"
        self._current = what
        msg = self._replies.pop(cid, None)
        if msg is None:
            self._read_until(lambda m: m.get("id") == cid and m.get("type") in ("done", "error"),
                             timeout, what, self.heartbeat_timeout_s)
            msg = self._replies.pop(cid)
        if msg["type"] == "error":
            raise RolloutServerError(f"rollout server: {what} failed: {msg.get('message')}")
        return msg

    def has_reply(self, cid: int) -> bool:
        """True once the reply to ``cid`` has been read (see :meth:`wait`)."""
        return cid in self._replies

    def call(self, cmd: str, timeout: float, what: str = "", **fields: Any) -> dict:
        return self.wait(self.send(cmd, **fields), timeout, what or f"'{cmd}'")

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def lost(self) -> bool:
        """Whether the server died or went silent past the heartbeat timeout (frozen): either
        way it will answer nothing more, so a supervisor may replace it."""
        return self._broken or not self.alive()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the server (politely, then by force) and every process it started."""
        if self._closed:
            return
        self._closed = True
        tree = [self.pid] + descendants(self.pid)
        if self.proc.poll() is None and not self._broken:
            try:
                os.write(self._w, (json.dumps({"cmd": "stop", "id": 0}) + "\n").encode())
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        tree += descendants(self.pid) if self.proc.poll() is None else []
        kill_tree(self.pid, self.pgid)
        for p in tree:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
