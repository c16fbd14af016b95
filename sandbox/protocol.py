"""Size-capped framing between the orchestrator and its workers (no pickle).

A frame is a 16-byte header ``b"SBX1" | u32 json_len | u32 a_len | u32 b_len`` followed by a
UTF-8 JSON object and two raw byte blobs (program + stdin on requests, stdout + stderr tail on
replies). Every length is checked against a cap before anything is allocated, so a corrupt or
hostile peer cannot make the reader allocate more than the caps allow. Stdlib only: the worker
imports this module inside the sandbox.

The JSON goes through the C scanner and encoder of ``_json`` directly (strict JSON, no NaN or
Infinity), not through the ``json`` package: the worker then never imports ``json`` and ``re``,
whose memory every fork would copy.
"""
from __future__ import annotations

import _json
import os
import struct

MAGIC = b"SBX1"
HEADER = struct.Struct("<4sIII")
MAX_JSON = 1 << 16


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame, or closed the pipe."""


class _DecoderSettings:
    """The attributes ``_json.make_scanner`` reads from a JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> None:
        raise ValueError(f"{name} is not allowed")


def _not_json(obj: object) -> None:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


_scan = _json.make_scanner(_DecoderSettings())
_encoder = _json.make_encoder(None, _not_json, _json.encode_basestring_ascii, None, ":", ",",
                              False, False, False)


def encode_json(obj: dict) -> bytes:
    """Compact, ASCII-only JSON of ``obj`` (finite floats only)."""
    return "".join(_encoder(obj, 0)).encode()


def decode_json(data: bytes) -> dict:
    """The JSON object in ``data``; ProtocolError if it is not exactly one JSON object."""
    try:
        text = data.decode("utf-8")
        obj, end = _scan(text, 0)
    except Exception as e:   # StopIteration, UnicodeDecodeError, SystemError from the scanner
        raise ProtocolError(f"frame metadata is not JSON: {type(e).__name__}") from None
    if end != len(text):
        raise ProtocolError("frame metadata is not JSON: trailing data")
    if not isinstance(obj, dict):
        raise ProtocolError("frame metadata is not a JSON object")
    return obj


def encode(meta: dict, a: bytes = b"", b: bytes = b"") -> list[bytes]:
    """The pieces of one frame (write them in order)."""
    j = encode_json(meta)
    if len(j) > MAX_JSON:
        raise ProtocolError(f"frame metadata of {len(j)} bytes exceeds {MAX_JSON}")
    return [HEADER.pack(MAGIC, len(j), len(a), len(b)), j, a, b]


def write_frame(fd: int, meta: dict, a: bytes = b"", b: bytes = b"") -> None:
    """Write one frame with as few system calls as the pipe allows (writev)."""
    views = [memoryview(p) for p in encode(meta, a, b) if p]
    while views:
        n = os.writev(fd, views)
        while n:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


def read_exact(fd: int, n: int) -> bytes:
    if n == 0:
        return b""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise ProtocolError(f"pipe closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def read_frame(fd: int, max_blob: int) -> tuple[dict, bytes, bytes]:
    """Read one frame; raises ProtocolError on EOF, bad magic or a length over its cap."""
    magic, jl, al, bl = HEADER.unpack(read_exact(fd, HEADER.size))
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}")
    if jl > MAX_JSON or al > max_blob or bl > max_blob:
        raise ProtocolError(f"frame lengths {jl}/{al}/{bl} exceed caps {MAX_JSON}/{max_blob}")
    if al + bl <= MAX_JSON:   # small frame: one read for all of it
        body = read_exact(fd, jl + al + bl)
        return decode_json(body[:jl]), body[jl:jl + al], body[jl + al:]
    return decode_json(read_exact(fd, jl)), read_exact(fd, al), read_exact(fd, bl)
