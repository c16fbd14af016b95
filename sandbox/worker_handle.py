"""One sandbox worker process as the orchestrator sees it: started (isolated per
``isolation.worker_command``, moved into its memory cgroup), spoken to over two pipes in
``protocol`` frames, and killed; every failure of that as an ``InfraError``, never a verdict."""
from __future__ import annotations

import select
import subprocess
import tempfile

from . import isolation, protocol
from .cgroups import WorkerCgroup
from .procs import descendants

STARTUP_TIMEOUT_S = 60.0


class InfraError(Exception):
    """A failure of the sandbox itself (not of the program)."""


class IsolationUnavailable(RuntimeError):
    """No acceptable isolation on this host (e.g. root without bubblewrap and an interpreter
    that unprivileged users cannot read: programs would have to run as root)."""


def worker_json(obj: dict) -> str:
    return protocol.encode_json(obj).decode()


class WorkerHandle:
    """One worker process and its pipes."""

    def __init__(self, mode: str, config: dict, max_blob: int,
                 cgroup: tuple[str, int, int] | None = None, python: str | None = None) -> None:
        self.mode = mode
        self.max_blob = max_blob
        self.cgroup: WorkerCgroup | None = None
        self._errfile = tempfile.TemporaryFile()
        cmd = isolation.worker_command(mode, worker_json(config), python)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._errfile, env=isolation.worker_env(),
                                     close_fds=True, bufsize=0)
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        try:
            self.hello = self._read(STARTUP_TIMEOUT_S)[0]
        except InfraError as e:
            self.kill()
            raise InfraError(f"worker did not start ({e}): {self.stderr_head()}") from None
        if self.hello.get("op") != "hello":
            self.kill()
            raise InfraError(f"worker sent {self.hello!r} instead of hello")
        if self.hello.get("refuse"):
            self.close()
            raise IsolationUnavailable(f"isolation mode {mode!r}: {self.hello['refuse']}")
        if cgroup is not None:
            self.cgroup = WorkerCgroup.create(*cgroup)
            if self.cgroup is not None:
                try:   # the worker is idle: nothing of a program runs yet
                    for pid in [self.proc.pid] + sorted(descendants(self.proc.pid)):
                        self.cgroup.add(pid)
                except OSError as e:
                    self.kill()
                    raise InfraError(f"cannot move the worker into its cgroup: {e}") from None

    def stderr_head(self) -> str:
        try:
            self._errfile.seek(0)
            return self._errfile.read(2000).decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _read(self, timeout: float) -> tuple[dict, bytes, bytes]:
        poller = select.poll()   # not select(): the caller may hold over 1024 descriptors
        poller.register(self.rfd, select.POLLIN | select.POLLHUP | select.POLLERR)
        if not poller.poll(max(0, int(timeout * 1000))):
            raise InfraError(f"no reply from worker within {timeout:.1f}s")
        try:
            return protocol.read_frame(self.rfd, self.max_blob)
        except (protocol.ProtocolError, OSError) as e:
            raise InfraError(f"worker reply unreadable: {e}") from None

    def send(self, meta: dict, program: bytes, stdin: bytes) -> None:
        try:
            protocol.write_frame(self.wfd, meta, program, stdin)
        except (OSError, protocol.ProtocolError) as e:
            raise InfraError(f"cannot send to worker: {e}") from None

    def receive(self, timeout: float) -> tuple[dict, bytes, bytes]:
        reply = self._read(timeout)
        if reply[0].get("op") != "result":
            raise InfraError(f"worker error: {reply[0]!r}")
        return reply

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self._errfile):
            try:
                f.close()
            except OSError:
                pass
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None

    def close(self) -> None:
        """Polite shutdown: EOF on its stdin makes the worker exit."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()
