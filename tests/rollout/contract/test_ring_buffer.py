"""RolloutBuffer across real processes: data integrity, torn writes, back-pressure, dead
peers, zero-copy reads, and no leaked /dev/shm entries."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from rollout.contract import ring_buffer
from rollout.contract.ring_buffer import (
    BufferClosedError,
    BufferFullError,
    ReaderDiedError,
    RolloutBuffer,
    ShmError,
    WriterDiedError,
)
from rollout.contract.segments import SHM_DIR, list_segments
from tests.helpers.shm_peers import run_id, spawn

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR),
                                reason="needs /dev/shm (Linux POSIX shared memory)")


def _batch(seq: int) -> dict[str, np.ndarray]:
    n = 1 + seq % 7
    return {"tokens": (np.arange(n * 33, dtype=np.int32).reshape(n, 33) + seq),
            "logp": np.full((n, 33), -0.5 * seq, np.float32),
            "kind": (np.arange(n) % 2).astype(np.int8)}


WRITER_SRC = """
import sys, numpy as np
from rollout.contract.ring_buffer import RolloutBuffer
def batch(seq):
    n = 1 + seq % 7
    return {"tokens": (np.arange(n * 33, dtype=np.int32).reshape(n, 33) + seq),
            "logp": np.full((n, 33), -0.5 * seq, np.float32),
            "kind": (np.arange(n) % 2).astype(np.int8)}
buf = RolloutBuffer.attach(sys.argv[1] if len(sys.argv) > 1 else NAME)
"""


def test_many_slots_through_processes_in_order():
    run = run_id()
    buf = RolloutBuffer.create(run, num_slots=16, slot_capacity=64 << 10)
    total = 300
    p = spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + f"""
for s in range({total}):
    buf.put(batch(s), meta={{"step": s, "stats": {{"acc": s / 10}}}}, version=s // 50)
buf.close_writer()
""")
    try:
        for s in range(total):
            b = buf.get(timeout=20)
            assert b.seq == s and b.version == s // 50 and b.writer_pid == p.pid
            assert b.meta == {"step": s, "stats": {"acc": s / 10}}
            for k, v in _batch(s).items():
                np.testing.assert_array_equal(b.arrays[k], v)
                assert b.arrays[k].dtype == v.dtype
        with pytest.raises(BufferClosedError):
            buf.get(timeout=5)
        assert p.wait(10) == 0, p.stderr.read()
    finally:
        p.kill()
        buf.close()
    assert list_segments(run) == []


def test_checksummed_slots_verify_on_read():
    with RolloutBuffer.create(run_id(), num_slots=2, slot_capacity=4096) as buf:
        buf.checksum = True
        buf.put({"a": np.arange(6, dtype=np.int32)})
        np.testing.assert_array_equal(buf.get(timeout=1).arrays["a"], np.arange(6))
        buf.put({"a": np.arange(6, dtype=np.int32)})
        total = int(buf._hdr[1][ring_buffer._S_TOTAL])
        buf._payload(1, total)[-30:-26] ^= 0xFF  # corrupt the published data behind the ring's back
        with pytest.raises(ShmError, match="checksum mismatch in slot 1"):
            buf.get(timeout=1)


def test_zero_copy_read_frees_slot_after_block():
    run = run_id()
    with RolloutBuffer.create(run, num_slots=1, slot_capacity=4096) as buf:
        buf.put({"a": np.arange(5, dtype=np.int64)})
        with buf.read(timeout=1) as b:
            assert not b.arrays["a"].flags.owndata
            np.testing.assert_array_equal(b.arrays["a"], np.arange(5))
            with pytest.raises(BufferFullError):  # slot still held by the reader
                buf.put({"a": np.zeros(5, np.int64)}, timeout=0.2)
        buf.put({"a": np.ones(5, np.int64)}, timeout=1)
        np.testing.assert_array_equal(buf.get(timeout=1).arrays["a"], np.ones(5))


def test_backpressure_blocks_writer_and_drops_nothing():
    run = run_id()
    buf = RolloutBuffer.create(run, num_slots=2, slot_capacity=64 << 10)
    p = spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + """
for s in range(6):
    buf.put(batch(s), timeout=30)
    print("put", s, flush=True)
""")
    try:
        assert [p.stdout.readline().strip() for _ in range(2)] == ["put 0", "put 1"]
        time.sleep(0.7)  # the ring is full: the third put must still be blocked
        assert buf.pending() == 2
        assert p.poll() is None
        got = [buf.get(timeout=10).seq for _ in range(6)]
        assert got == list(range(6))
        assert p.wait(10) == 0
        assert p.stdout.read().split("\n")[:4] == [f"put {s}" for s in range(2, 6)]
    finally:
        p.kill()
        buf.close()


def test_full_ring_times_out_with_clear_error():
    with RolloutBuffer.create(run_id(), num_slots=2, slot_capacity=1024) as buf:
        buf.put({"x": np.zeros(3)})
        buf.put({"x": np.ones(3)})
        t0 = time.monotonic()
        with pytest.raises(BufferFullError, match="nothing was dropped"):
            buf.put({"x": np.ones(3)}, timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 2
        assert buf.pending() == 2
        with pytest.raises(ValueError, match="slot_capacity"):
            buf.put({"x": np.zeros(10_000)})


def test_writer_killed_mid_write_slot_never_returned():
    run = run_id()
    buf = RolloutBuffer.create(run, num_slots=4, slot_capacity=1 << 20)
    p = spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + """
import time
buf.put(batch(0))
buf.put(batch(1))
def hook():
    print("MID", flush=True)
    time.sleep(60)
buf._after_array_hook = hook
buf.put({"big": np.full(100_000, 7, np.int32), "tail": np.ones(10)})
""")
    try:
        assert p.stdout.readline().strip() == "MID"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
        # The two complete batches still come out, intact.
        for s in range(2):
            b = buf.get(timeout=5)
            assert b.seq == s
            np.testing.assert_array_equal(b.arrays["tokens"], _batch(s)["tokens"])
        t0 = time.monotonic()
        with pytest.raises(WriterDiedError, match=f"{p.pid} died while writing"):
            buf.get(timeout=10)
        assert time.monotonic() - t0 < 2.0
        # A restarted writer takes over the torn slot; the reader sees only the new data.
        q = spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + """
buf.put({"fresh": np.arange(4)}, version=9)
""")
        assert q.wait(10) == 0, q.stderr.read()
        b = buf.get(timeout=5)
        assert b.seq == 2 and b.version == 9 and set(b.arrays) == {"fresh"}
    finally:
        p.kill()
        buf.close()
    assert list_segments(run) == []


def test_idle_writer_death_detected_within_two_seconds():
    buf = RolloutBuffer.create(run_id(), num_slots=2, slot_capacity=4096)
    p = spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + """
import time
buf.put({"x": np.arange(3)})
print("OK", flush=True)
time.sleep(60)
""")
    try:
        assert p.stdout.readline().strip() == "OK"
        np.testing.assert_array_equal(buf.get(timeout=5).arrays["x"], np.arange(3))
        os.kill(p.pid, signal.SIGKILL)  # not reaped yet: a zombie must count as dead
        t0 = time.monotonic()
        with pytest.raises(WriterDiedError, match="no batch after seq 0"):
            buf.get(timeout=10)
        assert time.monotonic() - t0 < 2.0
    finally:
        p.kill()
        p.wait()
        buf.close()


def test_dead_reader_unblocks_full_writer():
    buf = RolloutBuffer.create(run_id(), num_slots=1, slot_capacity=4096)
    p = spawn(f"""
import time
from rollout.contract.ring_buffer import RolloutBuffer
r = RolloutBuffer.attach({buf.name!r}); r.open_reader()
print("OK", flush=True); time.sleep(60)
""")
    try:
        assert p.stdout.readline().strip() == "OK"
        buf.put({"x": np.arange(3)})
        os.kill(p.pid, signal.SIGKILL)
        with pytest.raises(ReaderDiedError, match=str(p.pid)):
            buf.put({"x": np.arange(3)}, timeout=10)
    finally:
        p.kill()
        p.wait()
        buf.close()


_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float16, np.float32,
           np.float64, np.bool_]


def test_any_arrays_round_trip_exactly():
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    arrays = st.dictionaries(
        st.text("abcdefgh_.", min_size=1, max_size=8),
        st.sampled_from(_DTYPES).flatmap(lambda dt: hnp.arrays(
            dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7))),
        max_size=6)
    meta = st.dictionaries(st.text(max_size=5), st.integers(-5, 5) | st.text(max_size=5),
                           max_size=3)

    with RolloutBuffer.create(run_id(), num_slots=3, slot_capacity=1 << 16) as buf:
        @settings(max_examples=60, deadline=None)
        @given(arrays, meta, st.booleans(), st.integers(0, 2**40))
        def check(arrs, m, transpose, version):
            if transpose:  # non-contiguous inputs are copied in C order
                arrs = {k: v.T for k, v in arrs.items()}
            buf.put(arrs, meta=m, version=version, timeout=1)
            b = buf.get(timeout=1)
            assert b.meta == m and b.version == version and list(b.arrays) == list(arrs)
            for k, v in arrs.items():
                assert b.arrays[k].dtype == v.dtype and b.arrays[k].shape == v.shape
                np.testing.assert_array_equal(b.arrays[k], v)

        check()
