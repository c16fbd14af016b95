"""The worker protocol: frames round-trip, and every malformed or oversized frame is refused."""
from __future__ import annotations

import os
import struct
import threading

import pytest

from sandbox import protocol


def _pipe_roundtrip(meta, a, b, max_blob):
    r, w = os.pipe()
    try:
        t = threading.Thread(target=protocol.write_frame, args=(w, meta, a, b))
        t.start()
        got = protocol.read_frame(r, max_blob)
        t.join()
        return got
    finally:
        os.close(r)
        os.close(w)


def test_frames_round_trip_including_large_blobs():
    big = os.urandom(3 << 20)          # larger than a pipe buffer: partial writes happen
    meta, a, b = _pipe_roundtrip({"op": "run", "x": [1, 2]}, b"prog", big, 4 << 20)
    assert meta == {"op": "run", "x": [1, 2]} and a == b"prog" and b == big


def _raw(data: bytes, max_blob: int = 1 << 20):
    r, w = os.pipe()
    try:
        os.write(w, data)
        os.close(w)
        w = -1
        return protocol.read_frame(r, max_blob)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_oversized_and_malformed_frames_are_refused():
    with pytest.raises(protocol.ProtocolError, match="exceed caps"):
        _raw(protocol.HEADER.pack(protocol.MAGIC, 2, 1 << 30, 0) + b"{}")
    with pytest.raises(protocol.ProtocolError, match="exceed caps"):
        _raw(protocol.HEADER.pack(protocol.MAGIC, protocol.MAX_JSON + 1, 0, 0))
    with pytest.raises(protocol.ProtocolError, match="magic"):
        _raw(struct.pack("<4sIII", b"PKL\x80", 2, 0, 0) + b"{}")
    with pytest.raises(protocol.ProtocolError, match="not JSON"):
        _raw(protocol.HEADER.pack(protocol.MAGIC, 3, 0, 0) + b"\x80\x04.")
    with pytest.raises(protocol.ProtocolError, match="not a JSON object"):
        _raw(protocol.HEADER.pack(protocol.MAGIC, 2, 0, 0) + b"[]")
    with pytest.raises(protocol.ProtocolError, match="pipe closed"):
        _raw(protocol.HEADER.pack(protocol.MAGIC, 10, 0, 0) + b"{}")
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.encode({"x": "y" * protocol.MAX_JSON})
