"""Every process of a multi-process run learns within a second that another one stopped.

JAX's own failure detection is a heartbeat (100 s by default) after which the runtime aborts
the process from C++, skipping every cleanup; a collective on a dead peer may fail at once or
wait. So the trainer keeps one TCP connection per process to process 0, started right after
`jax.distributed.initialize`: the kernel closes a socket however its process ends (exit,
exception, SIGKILL, the out-of-memory killer), so a closed connection is a reliable "stopped".

* Process 0 accepts one connection from each other process. When one closes before the run
  ended, it tells the others which process it was, then reports it itself.
* Every other process reports when its connection to process 0 closes (process 0 stopped) or
  when process 0 names another process that stopped.

A report calls `on_lost(message)` once, from the watch's thread; the trainer's handler releases
its rollout server and shared memory and ends the process with a one-line error. `end()`, which
every process calls when the run ends well (or every process stops on a signal), first stops
reporting, then meets the others at a barrier, then closes the links.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import jax
import numpy as np

from cure_jax import distributed

CONNECT_TIMEOUT_S = 60.0


class PeerWatch:
    """The liveness links of this process (see the module docstring)."""

    def __init__(self, on_lost: Callable[[str], None]) -> None:
        self.on_lost = on_lost
        self.index, self.count = jax.process_index(), jax.process_count()
        self._armed = threading.Event()
        self.fired = threading.Event()  # a loss was reported (the process is about to end)
        self._reported = threading.Lock()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> PeerWatch:
        """Connect every process to process 0 (a collective: every process calls it)."""
        if self.count == 1:
            return self
        from jax.experimental import multihost_utils
        self._armed.set()
        port = 0
        if self.index == 0:
            server = socket.create_server(("", 0), backlog=self.count)
            port = server.getsockname()[1]
        port = int(np.asarray(multihost_utils.broadcast_one_to_all(np.int32(port))))
        if self.index == 0:
            server.settimeout(CONNECT_TIMEOUT_S)
            for _ in range(self.count - 1):
                conn, _ = server.accept()
                conn.settimeout(None)
                peer = int(conn.recv(16).split(b"\n")[0])
                self._socks.append(conn)
                threading.Thread(target=self._watch_peer, args=(conn, peer), daemon=True,
                                 name=f"peer-watch-{peer}").start()
            server.close()
        else:
            conn = socket.create_connection((distributed.coordinator_host(), port),
                                            timeout=CONNECT_TIMEOUT_S)
            conn.settimeout(None)
            conn.sendall(f"{self.index}\n".encode())
            self._socks.append(conn)
            threading.Thread(target=self._watch_root, args=(conn,), daemon=True,
                             name="peer-watch-0").start()
        return self

    def _lost(self, who: int, how: str) -> None:
        if not self._armed.is_set() or not self._reported.acquire(blocking=False):
            return
        self.fired.set()
        if self.index == 0:
            with self._lock:
                for s in self._socks:
                    try:
                        s.sendall(f"lost {who}\n".encode())
                    except OSError:
                        pass
        self.on_lost(f"process {who} of {self.count} {how}")

    def _watch_peer(self, conn: socket.socket, peer: int) -> None:
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        self._lost(peer, "stopped")

    def _watch_root(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
                head, sep, _ = buf.partition(b"\n")
                if sep and head.startswith(b"lost "):
                    self._lost(int(head[5:]), "stopped (seen by process 0)")
                    return
        except OSError:
            pass
        self._lost(0, "stopped")

    def end(self, name: str) -> None:
        """Every process ends the run here together (a normal end, or a stop every process
        agreed on): stop reporting, wait for all at a barrier, then close the links."""
        self._armed.clear()
        distributed.barrier(name)
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass
            self._socks.clear()

    def hold_if_fired(self, timeout_s: float = 60.0) -> None:
        """Called on an error in the main thread: when it comes from a lost peer (a collective
        that failed), let the watch's thread end the process with its one-line report."""
        if self.fired.is_set():
            time.sleep(timeout_s)


def exit_on_loss(prog: str, release: Callable[[], None]) -> Callable[[str], None]:
    """An `on_lost` handler: one line `<prog>: error: ...` on stderr, `release()` (the rollout
    server, the shared memory), then exit status 1 at once, skipping exit hooks that would wait
    on the dead peer (JAX's shutdown barrier)."""
    def on_lost(message: str) -> None:
        print(f"{prog}: error: {message}; stopping this process too", file=sys.stderr, flush=True)
        try:
            release()
        finally:
            os._exit(1)
    return on_lost
