"""RolloutBuffer: experience from the rollout server to the learner through shared memory.

A single-producer single-consumer ring of ``num_slots`` fixed-capacity slots in one segment
(:mod:`.segments`). Each slot header holds (state, sequence number, writer pid, version, ...).
The writer fills the payload first and flips the state to READY last (one aligned 8-byte
store), so a reader only ever returns slots whose state is READY with the expected sequence
number: a slot whose writer died mid-write stays WRITING and is never returned. A reader
waiting for data checks the writer's pid every ~0.2 s and raises :class:`WriterDiedError` when
it is gone; a writer facing a full ring blocks (back-pressure) until the reader frees a slot or
its timeout expires (:class:`BufferFullError`); it never drops data.

A slot holds any named numpy arrays plus a JSON-able ``meta`` dict; what the experience rows
must look like is :mod:`.schema`'s business, not the ring's.

Limits: one writer and one reader per ring (use one ring per rollout server). Publication
relies on ordered stores (x86-64 TSO; CPython's stores happen in program order), with an
optional crc32 per slot (``buf.checksum = True`` on the writer; readers verify it) for weaker
memory models. Liveness is by pid (zombies count as dead); a pid reused within the 0.2 s check
is not detected.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Self

import numpy as np

from .procs import pid_alive
from .segments import (
    LIVENESS_PERIOD_S,
    POLL_MIN_S,
    Segment,
    ShmError,
    WriterDiedError,
    align,
    segment_name,
    sleep_backoff,
)

__all__ = [
    "Batch",
    "BufferClosedError",
    "BufferFullError",
    "ReaderDiedError",
    "RolloutBuffer",
    "ShmError",
    "WriterDiedError",
]


class ReaderDiedError(ShmError):
    """The process reading a buffer died while the writer waited for space."""


class BufferFullError(ShmError, TimeoutError):
    """The ring stayed full for the whole timeout (back-pressure, nothing dropped)."""


class BufferClosedError(ShmError, EOFError):
    """The writer closed the buffer and every slot it wrote has been read."""


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
        off = align(off + a.nbytes)
    desc = json.dumps({"arrays": entries, "meta": dict(meta or {})}).encode()
    base = align(len(desc))
    placements = [(a, base + o) for a, o in placements]
    return desc, placements, base + off


class RolloutBuffer:
    """Single-producer single-consumer shared-memory ring of fixed-capacity slots.

    Create it in one process (:meth:`create`, the owner), attach in the other
    (:meth:`attach` with the segment name). Either side may own it. The writer calls
    :meth:`put`; the reader calls :meth:`get` (copies) or :meth:`read` (zero-copy views
    valid inside the ``with`` block).
    """

    def __init__(self, seg: Segment) -> None:
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
        seg = Segment(segment_name(run_id, kind), cls.segment_bytes(num_slots, slot_capacity),
                      create=True)
        g = np.ndarray((_G_WORDS,), np.int64, seg.buf, 0)
        g[_G_NSLOTS], g[_G_CAP], g[_G_OWNER] = num_slots, align(slot_capacity), os.getpid()
        g[_G_MAGIC] = _BUF_MAGIC
        return cls(seg)

    @staticmethod
    def segment_bytes(num_slots: int, slot_capacity: int) -> int:
        """Shared-memory bytes of a ring of ``num_slots`` slots of ``slot_capacity`` bytes."""
        return _G_WORDS * 8 + num_slots * (_S_WORDS * 8 + align(slot_capacity))

    @classmethod
    def attach(cls, name: str) -> RolloutBuffer:
        """Map an existing ring by segment name (see :attr:`name`)."""
        return cls(Segment(name, None, create=False))

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
        delay, next_check = POLL_MIN_S, time.monotonic() + LIVENESS_PERIOD_S
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
            delay = sleep_backoff(delay)
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
        delay, next_check = POLL_MIN_S, time.monotonic() + LIVENESS_PERIOD_S
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
            delay = sleep_backoff(delay)
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
        base = self._slot_off(i) + _S_WORDS * 8 + align(dlen)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
