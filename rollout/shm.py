"""Shared memory between the rollout server and the learner: RolloutBuffer and WeightChannel.

numpy + stdlib only, so both the torch side (`rollout`) and the JAX side (`cure_jax`) import it.

Segments are POSIX shared memory (files under /dev/shm on Linux) named
``cure-<run_id>-<kind>-<owner_pid>``. The creating process owns a segment and unlinks it
on exit (atexit, and SIGTERM/SIGHUP when no other handler is installed). A SIGKILL cannot
be caught, so the first owned segment of a process also starts a tiny janitor process that
polls the owner's pid and unlinks whatever the owner left behind once it dies.
:func:`cleanup_stale` removes segments of dead owners (by the pid in the name) for anyone
starting fresh.

RolloutBuffer: a single-producer single-consumer ring of ``num_slots`` fixed-capacity slots.
Each slot header holds (state, sequence number, writer pid, version, ...). The writer fills
the payload first and flips the state to READY last (one aligned 8-byte store), so a reader
only ever returns slots whose state is READY with the expected sequence number: a slot
whose writer died mid-write stays WRITING and is never returned. A reader waiting for data
checks the writer's pid every ~0.2 s and raises :class:`WriterDiedError` when it is gone;
a writer facing a full ring blocks (back-pressure) until the reader frees a slot or its
timeout expires (:class:`BufferFullError`); it never drops data.

WeightChannel: two buffers (double buffering), each a JSON manifest (HF name, dtype,
shape, offset) followed by the tensors in HF naming and layout. The writer fills the buffer
that is not published, then publishes it with its version; readers map the published one
with zero copies and pin it while loading, so the writer never overwrites a buffer in use.
The writer streams: ``write`` takes an iterator of (name, array) and ``writer()`` hands out
views into the spare buffer, so each tensor is copied once, straight into shared memory, and
the version is published (one 8-byte store) only after the last one.
bfloat16: arrays of ``ml_dtypes.bfloat16`` are stored as BF16 and read back as
``ml_dtypes.bfloat16`` views when ml_dtypes is installed (it is, with JAX), else as uint16
views of the same bits; ``write(..., cast="BF16")`` converts float32 with round-to-nearest-even
in plain numpy while copying.

Limits: one writer and one reader per ring (use one ring per rollout server). Publication
relies on ordered stores (x86-64 TSO; CPython's stores happen in program order), with an
optional crc32 per slot (``buf.checksum = True`` on the writer; readers verify it) for weaker memory models.
Liveness is by pid (zombies count as dead); a pid reused within the 0.2 s check is not
detected.
"""
from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import json
import mmap
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

try:  # ml_dtypes ships with JAX; optional here.
    import ml_dtypes as _ml_dtypes

    BFLOAT16: np.dtype | None = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    BFLOAT16 = None

__all__ = [
    "BFLOAT16",
    "Batch",
    "BufferClosedError",
    "BufferFullError",
    "ReaderDiedError",
    "RolloutBuffer",
    "ShmError",
    "TornReadError",
    "WeightChannel",
    "WeightSnapshot",
    "WeightWriter",
    "WriterDiedError",
    "cleanup_stale",
    "list_segments",
    "pid_alive",
    "segment_name",
]

SHM_DIR = "/dev/shm"
PREFIX = "cure-"
_ALIGN = 64
_POLL_MIN_S = 20e-6
_POLL_MAX_S = 2e-3
LIVENESS_PERIOD_S = 0.2


class ShmError(RuntimeError):
    """Base class of shared-memory errors."""


class WriterDiedError(ShmError):
    """The process writing a buffer died; its half-written slot (if any) was discarded."""


class ReaderDiedError(ShmError):
    """The process reading a buffer died while the writer waited for space."""


class BufferFullError(ShmError, TimeoutError):
    """The ring stayed full for the whole timeout (back-pressure, nothing dropped)."""


class BufferClosedError(ShmError, EOFError):
    """The writer closed the buffer and every slot it wrote has been read."""


class TornReadError(ShmError):
    """A weight buffer was rewritten while a reader used it."""


# --------------------------------------------------------------------------- processes

def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs (macOS): kill(0) is all we have
        return True
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")


# --------------------------------------------------------------------------- segments

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


# The janitor: a child that outlives a SIGKILLed owner and unlinks its segments.
_JANITOR_SRC = r"""
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
owner = int(sys.argv[1]); shm_dir = sys.argv[2]; names = set(); fd = 0; buf = b""
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return s[s.rfind(b")") + 2:][:1] not in (b"Z", b"X")
def feed(chunk):
    global buf
    buf += chunk
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        op, _, name = line.decode().partition(" ")
        if op == "add": names.add(name)
        elif op == "del": names.discard(name)
        elif op == "quit": sys.exit(0)
eof = False
while alive(owner):
    if eof:
        time.sleep(0.25); continue
    r, _, _ = select.select([fd], [], [], 0.25)
    if r:
        chunk = os.read(fd, 65536)
        eof = not chunk
        feed(chunk)
while not eof and select.select([fd], [], [], 0)[0]:  # owner died before we read it all
    chunk = os.read(fd, 65536)
    eof = not chunk
    feed(chunk)
for n in names:
    try: os.unlink(os.path.join(shm_dir, n))
    except FileNotFoundError: pass
"""


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
                self.janitor = subprocess.Popen(
                    [sys.executable, "-S", "-c", _JANITOR_SRC, str(os.getpid()), SHM_DIR],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True)
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
                except Exception:  # noqa: BLE001 - best effort at exit
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


class _Segment:
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


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _sleep_backoff(delay: float) -> float:
    time.sleep(delay)
    return min(delay * 2, _POLL_MAX_S)


# --------------------------------------------------------------------------- RolloutBuffer

# Global header (int64 words).
_G_MAGIC, _G_NSLOTS, _G_CAP, _G_WRITER, _G_READER, _G_HEAD, _G_TAIL, _G_CLOSED, _G_OWNER = range(9)
_G_WORDS = 16
_BUF_MAGIC = 0x43555245_42554631  # "CUREBUF1"
# Slot header (int64 words).
_S_STATE, _S_SEQ, _S_PID, _S_VERSION, _S_DESC, _S_TOTAL, _S_CRC = range(7)
_S_WORDS = 8
FREE, WRITING, READY, READING = 0, 1, 2, 3


@dataclasses.dataclass
class Batch:
    """One slot's content: numpy arrays, a JSON-able ``meta`` dict, and the slot header."""

    seq: int
    version: int
    writer_pid: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def _encode_desc(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None,
                 ) -> tuple[bytes, list[tuple[np.ndarray, int]], int]:
    entries, placements = [], []
    off = 0
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.hasobject:
            raise TypeError(f"RolloutBuffer.put: array {name!r} has dtype object; "
                            f"use numeric arrays (put strings in meta)")
        entries.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape),
                        "offset": off})
        placements.append((a, off))
        off = _align(off + a.nbytes)
    desc = json.dumps({"arrays": entries, "meta": dict(meta or {})}).encode()
    base = _align(len(desc))
    placements = [(a, base + o) for a, o in placements]
    return desc, placements, base + off


class RolloutBuffer:
    """Single-producer single-consumer shared-memory ring of fixed-capacity slots.

    Create it in one process (:meth:`create`, the owner), attach in the other
    (:meth:`attach` with the segment name). Either side may own it. The writer calls
    :meth:`put`; the reader calls :meth:`get` (copies) or :meth:`read` (zero-copy views
    valid inside the ``with`` block).
    """

    def __init__(self, seg: _Segment) -> None:
        self._seg = seg
        g = np.ndarray((_G_WORDS,), np.int64, seg.buf, 0)
        if g[_G_MAGIC] != _BUF_MAGIC:
            raise ShmError(f"segment {seg.name!r} is not a RolloutBuffer")
        self._g = g
        self.num_slots = int(g[_G_NSLOTS])
        self.slot_capacity = int(g[_G_CAP])
        self._slot_stride = _S_WORDS * 8 + self.slot_capacity
        self._base = _G_WORDS * 8
        self._hdr = [np.ndarray((_S_WORDS,), np.int64, seg.buf, self._slot_off(i))
                     for i in range(self.num_slots)]
        self.checksum = False

    # -- construction
    @classmethod
    def create(cls, run_id: str, num_slots: int, slot_capacity: int,
               kind: str = "buf") -> RolloutBuffer:
        """Create (and own) a ring of ``num_slots`` slots of ``slot_capacity`` payload bytes."""
        if num_slots < 1:
            raise ValueError(f"RolloutBuffer num_slots={num_slots}: must be >= 1")
        if slot_capacity < 256:
            raise ValueError(f"RolloutBuffer slot_capacity={slot_capacity}: must be >= 256 bytes")
        cap = _align(slot_capacity)
        size = _G_WORDS * 8 + num_slots * (_S_WORDS * 8 + cap)
        seg = _Segment(segment_name(run_id, kind), size, create=True)
        g = np.ndarray((_G_WORDS,), np.int64, seg.buf, 0)
        g[_G_NSLOTS], g[_G_CAP], g[_G_OWNER] = num_slots, cap, os.getpid()
        g[_G_MAGIC] = _BUF_MAGIC
        return cls(seg)

    @classmethod
    def attach(cls, name: str) -> RolloutBuffer:
        """Map an existing ring by segment name (see :attr:`name`)."""
        return cls(_Segment(name, None, create=False))

    @property
    def name(self) -> str:
        return self._seg.name

    def _slot_off(self, i: int) -> int:
        return self._base + i * self._slot_stride

    def _payload(self, i: int, nbytes: int) -> np.ndarray:
        o = self._slot_off(i) + _S_WORDS * 8
        return self._seg.buf[o:o + nbytes]

    # -- roles
    def open_writer(self) -> None:
        """Register this process as the writer; takes over from a dead writer.

        A slot the dead writer left half-written is reset to FREE and rewritten.
        """
        w = int(self._g[_G_WRITER])
        me = os.getpid()
        if w not in (0, me) and pid_alive(w):
            raise ShmError(f"RolloutBuffer {self.name}: writer pid {w} is still alive")
        head = int(self._g[_G_HEAD])
        h = self._hdr[head % self.num_slots]
        if h[_S_STATE] == WRITING:
            h[_S_STATE] = FREE  # torn by the dead writer: rewrite it
        elif h[_S_SEQ] == head and h[_S_STATE] in (READY, READING):
            self._g[_G_HEAD] = head + 1  # published just before the old writer died
        self._g[_G_CLOSED] = 0
        self._g[_G_WRITER] = me

    def open_reader(self) -> None:
        """Register this process as the reader (so a blocked writer can tell it died)."""
        r = int(self._g[_G_READER])
        me = os.getpid()
        if r not in (0, me) and pid_alive(r):
            raise ShmError(f"RolloutBuffer {self.name}: reader pid {r} is still alive")
        tail = int(self._g[_G_TAIL])
        h = self._hdr[tail % self.num_slots]
        if h[_S_STATE] == READING and h[_S_SEQ] == tail:
            h[_S_STATE] = READY  # the dead reader never finished it: read it again
        self._g[_G_READER] = me

    # -- writer
    def put(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None,
            version: int = 0, timeout: float | None = 60.0) -> int:
        """Write one batch into the next slot; block while the ring is full.

        Returns the batch's sequence number. Raises BufferFullError after ``timeout``
        seconds (None: wait forever) and ReaderDiedError if the registered reader died.
        """
        me = os.getpid()
        if int(self._g[_G_WRITER]) != me:
            self.open_writer()
        desc, placements, total = _encode_desc(arrays, meta)
        if total > self.slot_capacity:
            raise ValueError(f"RolloutBuffer {self.name}: batch needs {total} bytes but a slot "
                             f"holds {self.slot_capacity}; create the buffer with a larger "
                             f"slot_capacity")
        seq = int(self._g[_G_HEAD])
        i = seq % self.num_slots
        h = self._hdr[i]
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, next_check = _POLL_MIN_S, time.monotonic() + LIVENESS_PERIOD_S
        while h[_S_STATE] != FREE:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise BufferFullError(f"RolloutBuffer {self.name}: all {self.num_slots} slots "
                                      f"still full after {timeout:.1f}s (reader too slow or "
                                      f"stuck); nothing was dropped")
            if now >= next_check:
                next_check = now + LIVENESS_PERIOD_S
                r = int(self._g[_G_READER])
                if r and not pid_alive(r):
                    raise ReaderDiedError(f"RolloutBuffer {self.name}: reader pid {r} died "
                                          f"while the writer waited for a free slot")
            delay = _sleep_backoff(delay)
        h[_S_PID] = me
        h[_S_SEQ] = seq
        h[_S_STATE] = WRITING
        payload = self._payload(i, total)
        payload[:len(desc)] = np.frombuffer(desc, np.uint8)
        for a, off in placements:
            dst = np.ndarray(a.shape, a.dtype, self._seg.buf,
                             self._slot_off(i) + _S_WORDS * 8 + off)
            np.copyto(dst, a, casting="no")
            self._after_array_hook()
        h[_S_VERSION] = version
        h[_S_DESC] = len(desc)
        h[_S_TOTAL] = total
        h[_S_CRC] = zlib.crc32(payload) + 1 if self.checksum else 0  # 0: no checksum
        h[_S_STATE] = READY  # publish: the last store of the slot
        self._g[_G_HEAD] = seq + 1
        return seq

    def _after_array_hook(self) -> None:
        """Called after each array copy in put(); tests use it to pause mid-write."""

    def close_writer(self) -> None:
        """Mark end of data: the reader gets BufferClosedError once it drained every slot."""
        self._g[_G_CLOSED] = 1
        if int(self._g[_G_WRITER]) == os.getpid():
            self._g[_G_WRITER] = 0

    # -- reader
    def _wait_ready(self, timeout: float | None) -> int:
        me = os.getpid()
        if int(self._g[_G_READER]) != me:
            self.open_reader()
        seq = int(self._g[_G_TAIL])
        i = seq % self.num_slots
        h = self._hdr[i]
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, next_check = _POLL_MIN_S, time.monotonic() + LIVENESS_PERIOD_S
        while not (h[_S_STATE] == READY and h[_S_SEQ] == seq):
            if self._g[_G_CLOSED] and int(self._g[_G_HEAD]) <= seq:
                raise BufferClosedError(f"RolloutBuffer {self.name}: writer closed the buffer")
            now = time.monotonic()
            if now >= next_check:
                next_check = now + LIVENESS_PERIOD_S
                w = int(self._g[_G_WRITER])
                if w and not pid_alive(w):
                    # Re-check: the writer may have published just before dying.
                    if h[_S_STATE] == READY and h[_S_SEQ] == seq:
                        break
                    torn = h[_S_STATE] == WRITING and h[_S_SEQ] == seq
                    raise WriterDiedError(
                        f"RolloutBuffer {self.name}: writer pid {w} died"
                        + (f" while writing slot {i} (seq {seq}); the partial slot was "
                           f"discarded" if torn else f"; no batch after seq {seq - 1}"))
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"RolloutBuffer {self.name}: no batch within {timeout:.1f}s "
                                   f"(writer pid {int(self._g[_G_WRITER])} alive but silent)")
            delay = _sleep_backoff(delay)
        h[_S_STATE] = READING
        return seq

    def _views(self, seq: int) -> Batch:
        i = seq % self.num_slots
        h = self._hdr[i]
        total, dlen = int(h[_S_TOTAL]), int(h[_S_DESC])
        payload = self._payload(i, total)
        crc = int(h[_S_CRC])
        if crc and zlib.crc32(payload) + 1 != crc:
            raise ShmError(f"RolloutBuffer {self.name}: checksum mismatch in slot {i} (seq {seq})")
        d = json.loads(payload[:dlen].tobytes())
        base = self._slot_off(i) + _S_WORDS * 8 + _align(dlen)
        arrays = {e["name"]: np.ndarray(tuple(e["shape"]), np.dtype(e["dtype"]), self._seg.buf,
                                        base + e["offset"]) for e in d["arrays"]}
        return Batch(seq=seq, version=int(h[_S_VERSION]), writer_pid=int(h[_S_PID]),
                     arrays=arrays, meta=d["meta"])

    def _release(self, seq: int) -> None:
        self._hdr[seq % self.num_slots][_S_STATE] = FREE
        self._g[_G_TAIL] = seq + 1

    def get(self, timeout: float | None = None) -> Batch:
        """Return the next batch (arrays copied out, slot freed at once).

        Raises WriterDiedError within ~0.2 s of the writer's death once the complete slots
        are drained, BufferClosedError after close_writer(), TimeoutError after ``timeout``.
        """
        seq = self._wait_ready(timeout)
        try:
            b = self._views(seq)
            b.arrays = {k: v.copy() for k, v in b.arrays.items()}
        finally:
            self._release(seq)
        return b

    @contextmanager
    def read(self, timeout: float | None = None) -> Iterator[Batch]:
        """Zero-copy: yields views into the slot; the slot is freed when the block exits."""
        seq = self._wait_ready(timeout)
        try:
            yield self._views(seq)
        finally:
            self._release(seq)

    def pending(self) -> int:
        """Number of written batches not read yet."""
        return int(self._g[_G_HEAD]) - int(self._g[_G_TAIL])

    def close(self) -> None:
        """Unmap; the owner also unlinks the segment."""
        if self._seg.buf is None:
            return
        me = os.getpid()
        if int(self._g[_G_READER]) == me:
            self._g[_G_READER] = 0
        self._g = self._hdr = None  # type: ignore[assignment]
        self._seg.close()

    def __enter__(self) -> RolloutBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- WeightChannel

# Safetensors dtype names <-> numpy dtypes.
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


def dtype_name(dt: np.dtype) -> str:
    """Safetensors dtype name of a numpy dtype (bfloat16 needs ml_dtypes)."""
    dt = np.dtype(dt)
    if BFLOAT16 is not None and dt == BFLOAT16:
        return "BF16"
    for k, v in _DTYPES.items():
        if v == dt:
            return k
    raise TypeError(f"dtype {dt} has no safetensors name")


def _reader_dtype(name: str) -> np.dtype:
    if name == "BF16":
        return BFLOAT16 if BFLOAT16 is not None else np.dtype("<u2")
    return _DTYPES[name]


def _itemsize(name: str) -> int:
    return 2 if name == "BF16" else _DTYPES[name].itemsize


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even, NaN kept NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u >> 16) & 1) + np.uint32(0x7FFF)
    out = ((u + r) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


# Header words.
_W_MAGIC, _W_CAP, _W_CUR, _W_WRITER, _W_NREAD = range(5)
_W_BUF0 = 8          # per buffer: state, version, manifest length, generation
_W_BUF_WORDS = 4
_W_READERS = 16      # reader pins: pid, buffer index, generation
_W_MAX_READERS = 32
_W_HDR_WORDS = _W_READERS + 3 * _W_MAX_READERS
_W_MANIFEST_CAP = 1 << 20
_CHAN_MAGIC = 0x43555245_57434831  # "CUREWCH1"
_B_EMPTY, _B_WRITING, _B_READY = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One manifest entry: HF name, safetensors dtype name, shape, byte offset in its buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class WeightSnapshot:
    """A pinned, published weight buffer: zero-copy numpy views by HF name."""

    def __init__(self, channel: WeightChannel, index: int, version: int, generation: int,
                 manifest: list[TensorInfo]) -> None:
        self._ch, self.index, self.version, self._gen = channel, index, version, generation
        self.manifest = manifest

    def array(self, info: TensorInfo) -> np.ndarray:
        off = self._ch._data_off(self.index) + info.offset
        return np.ndarray(info.shape, _reader_dtype(info.dtype), self._ch._seg.buf, off)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """(HF name, zero-copy view) pairs in manifest order."""
        for info in self.manifest:
            yield info.name, self.array(info)

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.items())

    def verify(self) -> None:
        """Raise TornReadError if the buffer was rewritten since it was pinned."""
        b = self._ch._bufhdr(self.index)
        if b[3] != self._gen or b[0] != _B_READY:
            raise TornReadError(f"WeightChannel {self._ch.name}: buffer {self.index} (version "
                                f"{self.version}) was rewritten while being read")


class WeightWriter:
    """One version being written into a WeightChannel's spare buffer (see
    :meth:`WeightChannel.writer`): tensors are placed one after another, 64-byte aligned."""

    def __init__(self, channel: WeightChannel, index: int, cast: str | None) -> None:
        self._ch, self._index, self._cast = channel, index, cast
        self._entries: list[list[Any]] = []
        self._names: set[str] = set()
        self._off = 0
        self.nbytes = 0  # tensor bytes written so far

    def _reserve(self, name: str, shape: tuple[int, ...], dt: str) -> int:
        if name in self._names:
            raise ValueError(f"WeightChannel {self._ch.name}: tensor {name!r} written twice "
                             f"in one version")
        n = int(np.prod(shape, dtype=np.int64)) * _itemsize(dt)
        if self._off + n > self._ch.capacity:
            raise ValueError(f"WeightChannel {self._ch.name}: tensor {name!r} does not fit "
                             f"(capacity {self._ch.capacity} bytes per buffer, {self._off} "
                             f"used by {len(self._entries)} tensors before it, it needs {n})")
        off = self._off
        self._names.add(name)
        self._entries.append([name, dt, list(shape), off, n])
        self._off = _align(off + n)
        self.nbytes += n
        return off

    def add(self, name: str, a: Any) -> None:
        """Copy ``a`` into place (converting floating arrays to the writer's ``cast``)."""
        a = np.asarray(a)
        dt = self._cast if (self._cast and a.dtype.kind == "f") else dtype_name(a.dtype)
        off = self._reserve(name, tuple(a.shape), dt)
        self._ch._copy_into(self._index, off, a, dt)

    def view(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A writable view of shared memory for tensor ``name``, to be filled in place.

        ``dtype``: a numpy dtype or a safetensors name ("BF16" views are uint16 bits unless
        ml_dtypes is installed). The writer's ``cast`` does not apply: the caller writes the
        final bytes.
        """
        dt = dtype if isinstance(dtype, str) else dtype_name(np.dtype(dtype))
        if dt != "BF16" and dt not in _DTYPES:
            raise TypeError(f"WeightChannel {self._ch.name}: tensor {name!r} has unknown dtype "
                            f"{dt!r}")
        shape = tuple(int(d) for d in shape)
        off = self._reserve(name, shape, dt)
        return np.ndarray(shape, _reader_dtype(dt), self._ch._seg.buf,
                          self._ch._data_off(self._index) + off)


class WeightChannel:
    """Double-buffered, versioned weights in HF naming/layout in shared memory.

    The learner side :meth:`create` s it and :meth:`write` s; the rollout side
    :meth:`attach` es and uses ``with ch.read() as snap:`` to get zero-copy views.
    """

    def __init__(self, seg: _Segment) -> None:
        self._seg = seg
        h = np.ndarray((_W_HDR_WORDS,), np.int64, seg.buf, 0)
        if h[_W_MAGIC] != _CHAN_MAGIC:
            raise ShmError(f"segment {seg.name!r} is not a WeightChannel")
        self._h = h
        self.capacity = int(h[_W_CAP])
        self._reader_slot: int | None = None

    @classmethod
    def create(cls, run_id: str, capacity_bytes: int, kind: str = "weights") -> WeightChannel:
        """Create (and own) a channel whose two buffers hold ``capacity_bytes`` of tensors each."""
        if capacity_bytes <= 0:
            raise ValueError(f"WeightChannel capacity_bytes={capacity_bytes}: must be > 0")
        cap = _align(capacity_bytes)
        hdr = _align(_W_HDR_WORDS * 8)
        size = hdr + 2 * (_W_MANIFEST_CAP + cap)
        seg = _Segment(segment_name(run_id, kind), size, create=True)
        h = np.ndarray((_W_HDR_WORDS,), np.int64, seg.buf, 0)
        h[_W_CAP], h[_W_CUR] = cap, -1
        h[_W_MAGIC] = _CHAN_MAGIC
        return cls(seg)

    @classmethod
    def attach(cls, name: str) -> WeightChannel:
        return cls(_Segment(name, None, create=False))

    @staticmethod
    def required_capacity(tensors: Mapping[str, np.ndarray], cast: str | None = None) -> int:
        """Bytes one buffer needs for ``tensors`` (after ``cast``)."""
        total = 0
        for a in tensors.values():
            n = int(np.prod(np.shape(a), dtype=np.int64))
            item = _itemsize(cast) if cast else np.asarray(a).dtype.itemsize
            total = _align(total + n * item)
        return total

    @property
    def name(self) -> str:
        return self._seg.name

    def _bufhdr(self, i: int) -> np.ndarray:
        o = (_W_BUF0 + i * _W_BUF_WORDS) * 8
        return np.ndarray((_W_BUF_WORDS,), np.int64, self._seg.buf, o)

    def _manifest_off(self, i: int) -> int:
        return _align(_W_HDR_WORDS * 8) + i * (_W_MANIFEST_CAP + self.capacity)

    def _data_off(self, i: int) -> int:
        return self._manifest_off(i) + _W_MANIFEST_CAP

    def _pins(self) -> np.ndarray:
        return np.ndarray((_W_MAX_READERS, 3), np.int64, self._seg.buf, _W_READERS * 8)

    @property
    def version(self) -> int:
        """Version of the published buffer, -1 before the first write."""
        cur = int(self._h[_W_CUR])
        return -1 if cur < 0 else int(self._bufhdr(cur)[1])

    # -- writer
    def write(self, tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
              version: int, cast: str | None = None, timeout: float = 30.0) -> int:
        """Copy ``tensors`` (HF name -> array in HF layout, or an iterator of (name, array)
        pairs) into the spare buffer and publish it as ``version``; returns the bytes written.

        An iterator is consumed one pair at a time and each array is copied straight into
        shared memory (one copy in all, nothing held), so an exporter can stream a model whose
        host copy would not fit. ``cast`` ("BF16", "F16", "F32") converts floating tensors
        while copying. Blocks up to ``timeout`` s while a live reader still pins the spare
        buffer. Nothing is published unless every tensor was written (see :meth:`writer`).
        """
        pairs = tensors.items() if isinstance(tensors, Mapping) else tensors
        with self.writer(version, cast=cast, timeout=timeout) as w:
            for name, a in pairs:
                w.add(name, a)
        return w.nbytes

    @contextmanager
    def writer(self, version: int, cast: str | None = None,
               timeout: float = 30.0) -> Iterator[WeightWriter]:
        """Open the spare buffer for writing ``version``; publish it when the block exits cleanly.

        ``with ch.writer(v) as w:`` then ``w.add(name, array)`` (copies into place) or
        ``w.view(name, shape, dtype)`` (a writable numpy view to fill in place). The version
        becomes visible to readers only after the block ends without an exception: a writer
        that raises or is killed part-way leaves the published buffer (the other one) as it
        was, so readers never see a torn version.
        """
        if cast is not None and cast not in ("BF16", "F16", "F32"):
            raise ValueError(f"WeightChannel.write cast={cast!r}: use 'BF16', 'F16' or 'F32'")
        self._h[_W_WRITER] = os.getpid()
        cur = int(self._h[_W_CUR])
        tgt = 0 if cur != 0 else 1
        self._wait_unpinned(tgt, timeout)
        b = self._bufhdr(tgt)
        b[0] = _B_WRITING  # readers only ever map the published buffer; this one is not it
        b[3] += 1
        w = WeightWriter(self, tgt, cast)
        yield w
        man = json.dumps(w._entries).encode()
        if len(man) > _W_MANIFEST_CAP:
            raise ValueError(f"WeightChannel {self.name}: manifest of {len(w._entries)} tensors "
                             f"is {len(man)} bytes, over {_W_MANIFEST_CAP}")
        mo = self._manifest_off(tgt)
        self._seg.buf[mo:mo + len(man)] = np.frombuffer(man, np.uint8)
        b[2] = len(man)
        b[1] = version
        b[0] = _B_READY
        self._h[_W_CUR] = tgt  # publish: one aligned 8-byte store, after everything else

    def _copy_into(self, i: int, off: int, a: np.ndarray, dt: str) -> None:
        o = self._data_off(i) + off
        if dt == "BF16":
            dst = np.ndarray(a.shape, np.uint16, self._seg.buf, o)
            if BFLOAT16 is not None and a.dtype == BFLOAT16:
                np.copyto(dst, a.view(np.uint16))
            elif BFLOAT16 is not None:
                np.copyto(dst.view(BFLOAT16), a, casting="unsafe")
            else:
                dst[...] = f32_to_bf16_bits(a)
        else:
            np.copyto(np.ndarray(a.shape, _DTYPES[dt], self._seg.buf, o), a, casting="unsafe")

    def _wait_unpinned(self, i: int, timeout: float) -> None:
        pins = self._pins()
        deadline = time.monotonic() + timeout
        delay = _POLL_MIN_S
        while True:
            busy = [int(p) for p, idx, _ in pins if p and idx == i and pid_alive(int(p))]
            if not busy:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"WeightChannel {self.name}: buffer {i} still pinned by "
                                   f"reader pid(s) {busy} after {timeout:.1f}s")
            delay = _sleep_backoff(delay)

    # -- reader
    def _claim_reader_slot(self) -> int:
        if self._reader_slot is not None:
            return self._reader_slot
        pins, me = self._pins(), os.getpid()
        # TP workers attach at once: claim under an exclusive lock on the segment file.
        fd = os.open(os.path.join(SHM_DIR, self.name), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for k in range(_W_MAX_READERS):
                p = int(pins[k, 0])
                if p == 0 or p == me or not pid_alive(p):
                    pins[k, 1] = -1
                    pins[k, 0] = me
                    self._reader_slot = k
                    return k
        finally:
            os.close(fd)  # drops the lock
        raise ShmError(f"WeightChannel {self.name}: more than {_W_MAX_READERS} live readers")

    def wait_version(self, min_version: int, timeout: float = 60.0) -> int:
        """Block until the published version is >= ``min_version``; returns it."""
        deadline = time.monotonic() + timeout
        delay = _POLL_MIN_S
        while self.version < min_version:
            w = int(self._h[_W_WRITER])
            if time.monotonic() >= deadline:
                raise TimeoutError(f"WeightChannel {self.name}: version {min_version} not "
                                   f"published within {timeout:.1f}s (have {self.version})")
            if w and not pid_alive(w):
                raise WriterDiedError(f"WeightChannel {self.name}: writer pid {w} died before "
                                      f"publishing version {min_version}")
            delay = _sleep_backoff(delay)
        return self.version

    @contextmanager
    def read(self) -> Iterator[WeightSnapshot]:
        """Pin the published buffer and yield zero-copy views; verifies it was not rewritten."""
        k = self._claim_reader_slot()
        pins = self._pins()
        while True:
            cur = int(self._h[_W_CUR])
            if cur < 0:
                raise ShmError(f"WeightChannel {self.name}: nothing published yet")
            pins[k, 1] = cur
            if int(self._h[_W_CUR]) == cur:  # not republished between read and pin
                break
        try:
            b = self._bufhdr(cur)
            gen, version, mlen = int(b[3]), int(b[1]), int(b[2])
            mo = self._manifest_off(cur)
            raw = json.loads(self._seg.buf[mo:mo + mlen].tobytes())
            manifest = [TensorInfo(n, d, tuple(s), o, nb) for n, d, s, o, nb in raw]
            snap = WeightSnapshot(self, cur, version, gen, manifest)
            snap.verify()
            yield snap
            snap.verify()
        finally:
            pins[k, 1] = -1

    def close(self) -> None:
        """Release the reader slot, unmap; the owner also unlinks the segment."""
        if self._seg.buf is None:
            return
        if self._reader_slot is not None:
            self._pins()[self._reader_slot] = 0
            self._reader_slot = None
        self._h = None  # type: ignore[assignment]
        self._seg.close()

    def __enter__(self) -> WeightChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
