"""POSIX shared-memory segments of this project: naming, ownership, clean-up, mapping.

Segments are files under /dev/shm (Linux) named ``cure-<run_id>-<kind>-<owner_pid>``. The
creating process owns a segment and unlinks it on exit (atexit, and SIGTERM/SIGHUP when no
other handler is installed). A SIGKILL cannot be caught, so the first owned segment of a
process also starts a janitor (:mod:`.janitor`) that polls the owner's pid and unlinks
whatever the owner left behind once it dies. :func:`cleanup_stale` removes segments of dead
owners (by the pid in the name) for anyone starting fresh.

:class:`Segment` maps one such file; the ring buffer (:mod:`.ring_buffer`) and the weight
channel (:mod:`.weight_channel`) are laid out on top of it. Their shared errors, alignment and
polling helpers live here too.
"""
from __future__ import annotations

import atexit
import errno
import mmap
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from .procs import pid_alive

__all__ = [
    "ALIGN",
    "LIVENESS_PERIOD_S",
    "PREFIX",
    "SHM_DIR",
    "Segment",
    "ShmError",
    "WriterDiedError",
    "align",
    "cleanup_stale",
    "list_segments",
    "segment_name",
    "sleep_backoff",
]

SHM_DIR = "/dev/shm"
PREFIX = "cure-"
ALIGN = 64  # byte alignment of every array and tensor inside a segment
POLL_MIN_S = 20e-6
POLL_MAX_S = 2e-3
LIVENESS_PERIOD_S = 0.2
JANITOR_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "janitor.py")


class ShmError(RuntimeError):
    """Base class of shared-memory errors."""


class WriterDiedError(ShmError):
    """The process writing a buffer died; its half-written slot (if any) was discarded."""


def align(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGN`."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def sleep_backoff(delay: float) -> float:
    """Sleep ``delay`` seconds; returns the next (doubled, capped) delay of a polling loop."""
    time.sleep(delay)
    return min(delay * 2, POLL_MAX_S)


# --------------------------------------------------------------------------- names

_NAME_RE = re.compile(r"^cure-(?P<run>[A-Za-z0-9_.]+)-(?P<kind>[a-z]+)-(?P<pid>\d+)$")


def segment_name(run_id: str, kind: str, owner_pid: int | None = None) -> str:
    """``cure-<run_id>-<kind>-<owner_pid>``; run_id may hold letters, digits, '_' and '.'."""
    if not re.fullmatch(r"[A-Za-z0-9_.]{1,100}", run_id):
        raise ValueError(f"shm run_id {run_id!r}: use 1-100 letters, digits, '_' or '.'")
    if not re.fullmatch(r"[a-z]{1,16}", kind):
        raise ValueError(f"shm kind {kind!r}: use 1-16 lowercase letters")
    return f"{PREFIX}{run_id}-{kind}-{os.getpid() if owner_pid is None else owner_pid}"


def _owner_of(name: str) -> int | None:
    m = _NAME_RE.match(name)
    return int(m.group("pid")) if m else None


def list_segments(run_id: str | None = None) -> list[str]:
    """Names of this project's segments in /dev/shm (optionally only one run's)."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        m = _NAME_RE.match(n)
        if m and (run_id is None or m.group("run") == run_id):
            out.append(n)
    return sorted(out)


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def cleanup_stale(run_id: str | None = None) -> list[str]:
    """Unlink segments whose owner pid (from the name) is dead; returns the names removed."""
    removed = []
    for n in list_segments(run_id):
        pid = _owner_of(n)
        if pid is not None and not pid_alive(pid):
            _unlink(n)
            removed.append(n)
    return removed


# --------------------------------------------------------------------------- ownership

def start_janitor(owner_pid: int) -> subprocess.Popen:
    """Start the janitor (:mod:`.janitor`) watching ``owner_pid``; feed it on its stdin."""
    return subprocess.Popen(
        [sys.executable, "-S", JANITOR_PATH, str(owner_pid), SHM_DIR],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)


class _Registry:
    """Segments this process owns, unlinked at exit or (after SIGKILL) by the janitor."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.names: set[str] = set()
        self.janitor: subprocess.Popen | None = None
        self.hooks_installed = False

    def _reset_in_child(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.names = set()
        self.janitor = None
        self.hooks_installed = False

    def _tell(self, line: str) -> None:
        j = self.janitor
        if j is None or j.stdin is None:
            return
        try:
            j.stdin.write((line + "\n").encode())
            j.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def add(self, name: str) -> None:
        with self.lock:
            self._install_hooks()
            if self.janitor is None or self.janitor.poll() is not None:
                self.janitor = start_janitor(os.getpid())
                for n in self.names:
                    self._tell(f"add {n}")
            self.names.add(name)
            self._tell(f"add {name}")

    def discard(self, name: str) -> None:
        with self.lock:
            if name in self.names:
                self.names.discard(name)
                self._tell(f"del {name}")

    def unlink_all(self) -> None:
        if os.getpid() != self.pid:
            return
        with self.lock:
            for n in list(self.names):
                _unlink(n)
            self.names.clear()
            if self.janitor is not None:
                self._tell("quit")
                try:
                    self.janitor.stdin.close()  # type: ignore[union-attr]
                    self.janitor.wait(timeout=2)
                except Exception:  # noqa: BLE001, S110 - best effort at exit
                    pass
                self.janitor = None

    def _install_hooks(self) -> None:
        if self.hooks_installed:
            return
        self.hooks_installed = True
        atexit.register(self.unlink_all)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                if signal.getsignal(sig) is signal.SIG_DFL:
                    signal.signal(sig, self._on_signal)
            except (ValueError, OSError):  # pragma: no cover - exotic embeddings
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.unlink_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_REGISTRY = _Registry()
os.register_at_fork(after_in_child=_REGISTRY._reset_in_child)


def unlink_owned() -> None:
    """Unlink every segment this process owns now (they stay mapped until it exits): for a
    process about to end without running its exit hooks."""
    _REGISTRY.unlink_all()


# --------------------------------------------------------------------------- mapping

def _reserve(fd: int, size: int, name: str) -> None:
    """Back the whole segment now: a full /dev/shm then fails here with a clear error instead
    of killing a later write with SIGBUS."""
    def full() -> ShmError:
        st = os.statvfs(SHM_DIR)
        return ShmError(f"shared-memory segment {name!r}: needs {size / 2**20:.1f} MiB but "
                        f"{SHM_DIR} has {st.f_bavail * st.f_frsize / 2**20:.1f} MiB free "
                        f"(in Docker raise --shm-size)")

    st = os.statvfs(SHM_DIR)
    if size > st.f_bavail * st.f_frsize:  # checked first: never fill the tmpfs just to fail
        raise full()
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.ENOMEM):
            raise full() from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        # filesystem without fallocate: pages are allocated on first touch


class Segment:
    """One mapped shared-memory file; ``owned`` segments are unlinked by :meth:`close`."""

    def __init__(self, name: str, size: int | None, create: bool) -> None:
        self.name = name
        path = os.path.join(SHM_DIR, name)
        if create:
            assert size is not None
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                _REGISTRY.add(name)
                os.ftruncate(fd, size)
                _reserve(fd, size, name)
            except BaseException:
                os.close(fd)
                _unlink(name)
                _REGISTRY.discard(name)
                raise
        else:
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                raise ShmError(f"shared-memory segment {name!r} does not exist "
                               f"(its owner exited or never created it)") from None
            size = os.fstat(fd).st_size
        try:
            # MAP_POPULATE maps every page now, so the first write of a 1 GB weight buffer
            # runs at memcpy speed instead of paying a page fault per 4 KiB.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self.mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.size = size
        self.owned = create
        self.buf = np.frombuffer(self.mm, dtype=np.uint8)

    def close(self) -> None:
        if self.owned:
            _unlink(self.name)
            _REGISTRY.discard(self.name)
            self.owned = False
        self.buf = None  # type: ignore[assignment]
        try:
            self.mm.close()
        except BufferError:
            pass  # views still exported; the mapping goes when they do
        except ValueError:
            pass
