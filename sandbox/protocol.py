"""Size-capped framing between the orchestrator and its workers (no pickle).

A frame is a 16-byte header ``b"SBX1" | u32 json_len | u32 a_len | u32 b_len`` followed by a
UTF-8 JSON object and two raw byte blobs (program + stdin on requests, stdout + stderr tail on
replies). Every length is checked against a cap before anything is allocated, so a corrupt or
hostile peer cannot make the reader allocate more than the caps allow. Stdlib only: the worker
imports this module inside the sandbox.
"""
from __future__ import annotations

import json
import os
import struct

MAGIC = b"SBX1"
HEADER = struct.Struct("<4sIII")
MAX_JSON = 1 << 16


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame, or closed the pipe."""


def encode(meta: dict, a: bytes = b"", b: bytes = b"") -> list[bytes]:
    """The pieces of one frame (write them in order)."""
    j = json.dumps(meta, separators=(",", ":")).encode()
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
    try:
        meta = json.loads(read_exact(fd, jl))
    except ValueError as e:
        raise ProtocolError(f"frame metadata is not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ProtocolError("frame metadata is not a JSON object")
    return meta, read_exact(fd, al), read_exact(fd, bl)
