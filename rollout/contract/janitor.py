"""The segment janitor: a child that outlives a SIGKILLed owner and unlinks its segments.

A process that owns shared-memory segments unlinks them itself at exit (see
:mod:`.segments`), but SIGKILL cannot be caught. So its first owned segment starts this
janitor, in its own session with SIGINT and SIGTERM ignored::

    python -S .../rollout/contract/janitor.py OWNER_PID SHM_DIR

(also runnable as ``python -m rollout.contract.janitor``). The owner writes lines to the
janitor's stdin: ``add NAME`` / ``del NAME`` keep the set of owned segments, ``quit`` ends the
janitor (the owner cleaned up itself). The janitor polls the owner's pid and, once the owner
is dead, reads what is left in the pipe and unlinks every segment still in the set.

It is started by file path with ``-S`` (no site-packages) so it costs a bare interpreter's
start-up; it therefore imports only the standard library and :mod:`.procs` (which is
standard library only too).
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time

if __package__:
    from .procs import pid_alive
else:  # run by path: this folder is sys.path[0]
    from procs import pid_alive  # type: ignore[no-redef]

POLL_S = 0.25


class _Names:
    """The owner's segment names, fed by ``add``/``del``/``quit`` lines."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.buf = b""

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            op, _, name = line.decode().partition(" ")
            if op == "add":
                self.names.add(name)
            elif op == "del":
                self.names.discard(name)
            elif op == "quit":
                sys.exit(0)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    owner, shm_dir = int(argv[0]), argv[1]
    fd = 0
    state = _Names()
    eof = False
    while pid_alive(owner):
        if eof:
            time.sleep(POLL_S)
            continue
        r, _, _ = select.select([fd], [], [], POLL_S)
        if r:
            chunk = os.read(fd, 65536)
            eof = not chunk
            state.feed(chunk)
    while not eof and select.select([fd], [], [], 0)[0]:  # owner died before we read it all
        chunk = os.read(fd, 65536)
        eof = not chunk
        state.feed(chunk)
    for n in state.names:
        try:
            os.unlink(os.path.join(shm_dir, n))
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
