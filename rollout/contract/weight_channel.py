"""WeightChannel: learner weights to the rollout engine through shared memory, in HF layout.

Two buffers in one segment (:mod:`.segments`), double buffered: each holds a JSON manifest (HF
name, dtype, shape, offset) followed by the tensors in Hugging Face naming and layout, so any
HF-compatible engine can load them. The writer fills the buffer that is not published, then
publishes it with its version; readers map the published one with zero copies and pin it while
loading, so the writer never overwrites a buffer in use.

The writer streams: ``write`` takes an iterator of (name, array) and ``writer()`` hands out
views into the spare buffer, so each tensor is copied once, straight into shared memory, and
the version is published (one 8-byte store) only after the last one. Tensors sit one after
another, each :data:`~.segments.ALIGN`-byte aligned; :meth:`WeightChannel.required_capacity`
is the one place that sizes a buffer for a list of tensors.

bfloat16: arrays of ``ml_dtypes.bfloat16`` are stored as BF16 and read back as
``ml_dtypes.bfloat16`` views when ml_dtypes is installed (it is, with JAX), else as uint16
views of the same bits; ``write(..., cast="BF16")`` converts float32 with round-to-nearest-even
in plain numpy while copying.

Several readers (one per tensor-parallel worker) may pin the channel at once; publication
relies on ordered stores, as in :mod:`.ring_buffer`.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Self

import numpy as np

from .procs import pid_alive
from .segments import (
    POLL_MIN_S,
    SHM_DIR,
    Segment,
    ShmError,
    WriterDiedError,
    align,
    segment_name,
    sleep_backoff,
)

try:  # ml_dtypes ships with JAX; optional here.
    import ml_dtypes as _ml_dtypes

    BFLOAT16: np.dtype | None = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    BFLOAT16 = None

__all__ = [
    "BFLOAT16",
    "ShmError",
    "TensorInfo",
    "TornReadError",
    "WeightChannel",
    "WeightSnapshot",
    "WeightWriter",
    "WriterDiedError",
    "dtype_name",
    "f32_to_bf16_bits",
]


class TornReadError(ShmError):
    """A weight buffer was rewritten while a reader used it."""


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


def _stored_dtype(dt: np.dtype, cast: str | None) -> str:
    """Safetensors name a tensor of dtype ``dt`` is stored as under ``cast`` (floats only)."""
    return cast if (cast and dt.kind == "f") else dtype_name(dt)


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
        self._off = align(off + n)
        self.nbytes += n
        return off

    def add(self, name: str, a: Any) -> None:
        """Copy ``a`` into place (converting floating arrays to the writer's ``cast``)."""
        a = np.asarray(a)
        dt = _stored_dtype(a.dtype, self._cast)
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

    def __init__(self, seg: Segment) -> None:
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
        seg = Segment(segment_name(run_id, kind), cls.segment_bytes(capacity_bytes), create=True)
        h = np.ndarray((_W_HDR_WORDS,), np.int64, seg.buf, 0)
        h[_W_CAP], h[_W_CUR] = align(capacity_bytes), -1
        h[_W_MAGIC] = _CHAN_MAGIC
        return cls(seg)

    @staticmethod
    def segment_bytes(capacity_bytes: int) -> int:
        """Shared-memory bytes of a channel whose two buffers hold ``capacity_bytes`` each."""
        return align(_W_HDR_WORDS * 8) + 2 * (_W_MANIFEST_CAP + align(capacity_bytes))

    @classmethod
    def attach(cls, name: str) -> WeightChannel:
        return cls(Segment(name, None, create=False))

    @classmethod
    def required_capacity(cls, specs: Mapping[str, Any] | Iterable[tuple[str, Any, Any]],
                          cast: str | None = None) -> int:
        """Bytes one buffer needs (the ``capacity_bytes`` of :meth:`create`) for one version.

        ``specs``: (name, shape, dtype) triples in write order (dtype a numpy dtype or a
        safetensors name such as "BF16"), or a mapping name -> array. ``cast`` as in
        :meth:`write` (it converts floating tensors only). Tensors are placed exactly as
        :class:`WeightWriter` places them, so a channel of this capacity holds them and one
        byte less does not (``create`` rounds its capacity up to the alignment, which can
        only add room).
        """
        if isinstance(specs, Mapping):
            specs = [(k, np.shape(a), np.asarray(a).dtype) for k, a in specs.items()]
        off = end = 0
        for _, shape, dtype in specs:
            dt = dtype if isinstance(dtype, str) else _stored_dtype(np.dtype(dtype), cast)
            end = off + int(np.prod(shape, dtype=np.int64)) * _itemsize(dt)
            off = align(end)
        return end

    @property
    def name(self) -> str:
        return self._seg.name

    def _bufhdr(self, i: int) -> np.ndarray:
        o = (_W_BUF0 + i * _W_BUF_WORDS) * 8
        return np.ndarray((_W_BUF_WORDS,), np.int64, self._seg.buf, o)

    def _manifest_off(self, i: int) -> int:
        return align(_W_HDR_WORDS * 8) + i * (_W_MANIFEST_CAP + self.capacity)

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
        delay = POLL_MIN_S
        while True:
            busy = [int(p) for p, idx, _ in pins if p and idx == i and pid_alive(int(p))]
            if not busy:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"WeightChannel {self.name}: buffer {i} still pinned by "
                                   f"reader pid(s) {busy} after {timeout:.1f}s")
            delay = sleep_backoff(delay)

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
        delay = POLL_MIN_S
        while self.version < min_version:
            w = int(self._h[_W_WRITER])
            if time.monotonic() >= deadline:
                raise TimeoutError(f"WeightChannel {self.name}: version {min_version} not "
                                   f"published within {timeout:.1f}s (have {self.version})")
            if w and not pid_alive(w):
                raise WriterDiedError(f"WeightChannel {self.name}: writer pid {w} died before "
                                      f"publishing version {min_version}")
            delay = sleep_backoff(delay)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
