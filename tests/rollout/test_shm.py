"""RolloutBuffer and WeightChannel across real processes: data integrity, torn writes,
back-pressure, dead peers, zero-copy weights, and no leaked /dev/shm entries."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from rollout import shm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not os.path.isdir(shm.SHM_DIR),
                                reason="needs /dev/shm (Linux POSIX shared memory)")


def _run_id() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _spawn(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_gone(run_id: str, timeout: float = 4.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = shm.list_segments(run_id)
        if not left:
            return []
        time.sleep(0.05)
    return shm.list_segments(run_id)


def _batch(seq: int) -> dict[str, np.ndarray]:
    n = 1 + seq % 7
    return {"tokens": (np.arange(n * 33, dtype=np.int32).reshape(n, 33) + seq),
            "logp": np.full((n, 33), -0.5 * seq, np.float32),
            "kind": (np.arange(n) % 2).astype(np.int8)}


WRITER_SRC = """
import sys, numpy as np
from rollout import shm
def batch(seq):
    n = 1 + seq % 7
    return {"tokens": (np.arange(n * 33, dtype=np.int32).reshape(n, 33) + seq),
            "logp": np.full((n, 33), -0.5 * seq, np.float32),
            "kind": (np.arange(n) % 2).astype(np.int8)}
buf = shm.RolloutBuffer.attach(sys.argv[1] if len(sys.argv) > 1 else NAME)
"""


def test_many_slots_through_processes_in_order():
    run = _run_id()
    buf = shm.RolloutBuffer.create(run, num_slots=16, slot_capacity=64 << 10)
    total = 300
    p = _spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + f"""
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
        with pytest.raises(shm.BufferClosedError):
            buf.get(timeout=5)
        assert p.wait(10) == 0, p.stderr.read()
    finally:
        p.kill()
        buf.close()
    assert shm.list_segments(run) == []


def test_checksummed_slots_verify_on_read():
    with shm.RolloutBuffer.create(_run_id(), num_slots=2, slot_capacity=4096) as buf:
        buf.checksum = True
        buf.put({"a": np.arange(6, dtype=np.int32)})
        np.testing.assert_array_equal(buf.get(timeout=1).arrays["a"], np.arange(6))
        buf.put({"a": np.arange(6, dtype=np.int32)})
        total = int(buf._hdr[1][shm._S_TOTAL])
        buf._payload(1, total)[-30:-26] ^= 0xFF  # corrupt the published data behind the ring's back
        with pytest.raises(shm.ShmError, match="checksum mismatch in slot 1"):
            buf.get(timeout=1)


def test_zero_copy_read_frees_slot_after_block():
    run = _run_id()
    with shm.RolloutBuffer.create(run, num_slots=1, slot_capacity=4096) as buf:
        buf.put({"a": np.arange(5, dtype=np.int64)})
        with buf.read(timeout=1) as b:
            assert not b.arrays["a"].flags.owndata
            np.testing.assert_array_equal(b.arrays["a"], np.arange(5))
            with pytest.raises(shm.BufferFullError):  # slot still held by the reader
                buf.put({"a": np.zeros(5, np.int64)}, timeout=0.2)
        buf.put({"a": np.ones(5, np.int64)}, timeout=1)
        np.testing.assert_array_equal(buf.get(timeout=1).arrays["a"], np.ones(5))


def test_backpressure_blocks_writer_and_drops_nothing():
    run = _run_id()
    buf = shm.RolloutBuffer.create(run, num_slots=2, slot_capacity=64 << 10)
    p = _spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + """
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
    with shm.RolloutBuffer.create(_run_id(), num_slots=2, slot_capacity=1024) as buf:
        buf.put({"x": np.zeros(3)})
        buf.put({"x": np.ones(3)})
        t0 = time.monotonic()
        with pytest.raises(shm.BufferFullError, match="nothing was dropped"):
            buf.put({"x": np.ones(3)}, timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 2
        assert buf.pending() == 2
        with pytest.raises(ValueError, match="slot_capacity"):
            buf.put({"x": np.zeros(10_000)})


def test_writer_killed_mid_write_slot_never_returned():
    run = _run_id()
    buf = shm.RolloutBuffer.create(run, num_slots=4, slot_capacity=1 << 20)
    p = _spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + """
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
        with pytest.raises(shm.WriterDiedError, match=f"{p.pid} died while writing"):
            buf.get(timeout=10)
        assert time.monotonic() - t0 < 2.0
        # A restarted writer takes over the torn slot; the reader sees only the new data.
        q = _spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + """
buf.put({"fresh": np.arange(4)}, version=9)
""")
        assert q.wait(10) == 0, q.stderr.read()
        b = buf.get(timeout=5)
        assert b.seq == 2 and b.version == 9 and set(b.arrays) == {"fresh"}
    finally:
        p.kill()
        buf.close()
    assert shm.list_segments(run) == []


def test_idle_writer_death_detected_within_two_seconds():
    buf = shm.RolloutBuffer.create(_run_id(), num_slots=2, slot_capacity=4096)
    p = _spawn(WRITER_SRC.replace("NAME", repr(buf.name)) + """
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
        with pytest.raises(shm.WriterDiedError, match="no batch after seq 0"):
            buf.get(timeout=10)
        assert time.monotonic() - t0 < 2.0
    finally:
        p.kill()
        p.wait()
        buf.close()


def test_dead_reader_unblocks_full_writer():
    buf = shm.RolloutBuffer.create(_run_id(), num_slots=1, slot_capacity=4096)
    p = _spawn(f"""
import time
from rollout import shm
r = shm.RolloutBuffer.attach({buf.name!r}); r.open_reader()
print("OK", flush=True); time.sleep(60)
""")
    try:
        assert p.stdout.readline().strip() == "OK"
        buf.put({"x": np.arange(3)})
        os.kill(p.pid, signal.SIGKILL)
        with pytest.raises(shm.ReaderDiedError, match=str(p.pid)):
            buf.put({"x": np.arange(3)}, timeout=10)
    finally:
        p.kill()
        p.wait()
        buf.close()


OWNER_SRC = """
import sys, time, numpy as np
from rollout import shm
b = shm.RolloutBuffer.create(RUN, num_slots=2, slot_capacity=4096)
c = shm.WeightChannel.create(RUN, 1 << 16)
c.write({"w": np.ones(4, np.float32)}, version=1)
print(b.name, c.name, flush=True)
"""


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "exit"])
def test_owner_death_leaves_no_segments(how):
    run = _run_id()
    tail = {"sigkill": "time.sleep(60)", "sigterm": "time.sleep(60)", "exit": "sys.exit(0)"}[how]
    p = _spawn(OWNER_SRC.replace("RUN", repr(run)) + tail)
    try:
        names = p.stdout.readline().split()
        assert len(names) == 2 and sorted(names) == shm.list_segments(run) or how == "exit"
        if how != "exit":
            os.kill(p.pid, signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        p.wait(10)
        assert _wait_gone(run) == [], f"leaked after {how}"
    finally:
        p.kill()
        p.wait()


def test_attacher_sigkill_leaves_no_segments():
    run = _run_id()
    buf = shm.RolloutBuffer.create(run, num_slots=2, slot_capacity=4096)
    ch = shm.WeightChannel.create(run, 1 << 16)
    ch.write({"w": np.ones(4, np.float32)}, version=1)
    p = _spawn(f"""
import time
from rollout import shm
b = shm.RolloutBuffer.attach({buf.name!r}); b.open_writer()
c = shm.WeightChannel.attach({ch.name!r})
with c.read() as snap:
    print("OK", snap.version, flush=True)
    time.sleep(60)
""")
    try:
        assert p.stdout.readline().split() == ["OK", "1"]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
        # The killed reader's pin does not block the writer.
        ch.write({"w": np.zeros(4, np.float32)}, version=2, timeout=2)
        ch.write({"w": np.zeros(4, np.float32)}, version=3, timeout=2)
    finally:
        p.kill()
        buf.close()
        ch.close()
    assert shm.list_segments(run) == []


def test_cleanup_stale_removes_only_dead_owners():
    run = _run_id()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = shm.segment_name(run, "buf", owner_pid=p.pid)
    with open(os.path.join(shm.SHM_DIR, dead), "wb") as f:
        f.write(b"\0" * 64)
    live = shm.RolloutBuffer.create(run, num_slots=1, slot_capacity=1024)
    try:
        assert shm.cleanup_stale(run) == [dead]
        assert shm.list_segments(run) == [live.name]
    finally:
        live.close()


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="run_id"):
        shm.segment_name("bad/run", "buf")
    with pytest.raises(shm.ShmError, match="does not exist"):
        shm.RolloutBuffer.attach("cure-nosuchrun-buf-1")


# --------------------------------------------------------------------------- WeightChannel

def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"model.embed_tokens.weight": rng.standard_normal((64, 32)).astype(np.float32),
            "model.layers.0.self_attn.q_proj.bias": rng.standard_normal(32).astype(np.float32),
            "model.norm.weight": rng.standard_normal(32).astype(shm.BFLOAT16 or np.float32),
            "position_ids": np.arange(17, dtype=np.int32)}


def _addr_in(a: np.ndarray, seg_buf: np.ndarray) -> bool:
    lo = seg_buf.__array_interface__["data"][0]
    p = a.__array_interface__["data"][0]
    return lo <= p and p + a.nbytes <= lo + seg_buf.nbytes


def test_weight_channel_round_trip_across_processes_zero_copy():
    run = _run_id()
    p = _spawn(f"""
import sys, numpy as np
sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
from test_shm import _weights
from rollout import shm
c = shm.WeightChannel.create({run!r}, 1 << 20)
c.write(_weights(1), version=1)
print(c.name, flush=True)
sys.stdin.readline()
c.write(_weights(2), version=2)
c.write(_weights(3), version=3, cast="BF16")
print("done", flush=True)
sys.stdin.readline()
""")
    try:
        name = p.stdout.readline().strip()
        ch = shm.WeightChannel.attach(name)
        assert ch.wait_version(1, timeout=5) == 1
        with ch.read() as snap:
            got = snap.arrays()
            assert snap.version == 1
            assert [i.name for i in snap.manifest] == list(_weights(1))
            for k, v in _weights(1).items():
                assert got[k].dtype == v.dtype and got[k].shape == v.shape
                np.testing.assert_array_equal(got[k], v)
                assert not got[k].flags.owndata and _addr_in(got[k], ch._seg.buf)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "done"
        with ch.read() as snap:
            assert snap.version == 3
            got = snap.arrays()
            w = _weights(3)
            assert {i.name: i.dtype for i in snap.manifest} == {
                "model.embed_tokens.weight": "BF16", "model.layers.0.self_attn.q_proj.bias": "BF16",
                "model.norm.weight": "BF16", "position_ids": "I32"}
            bits = shm.f32_to_bf16_bits(w["model.embed_tokens.weight"])
            np.testing.assert_array_equal(got["model.embed_tokens.weight"].view(np.uint16), bits)
            np.testing.assert_array_equal(got["position_ids"], w["position_ids"])
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(10) == 0, p.stderr.read()
        ch.close()
    finally:
        p.kill()
        p.wait()
    assert _wait_gone(run) == []


def test_weight_channel_reader_pin_blocks_overwrite():
    run = _run_id()
    ch = shm.WeightChannel.create(run, 1 << 20)
    ch.write(_weights(1), version=1)
    p = _spawn(f"""
import sys, time, numpy as np
from rollout import shm
c = shm.WeightChannel.attach({ch.name!r})
c.write({{"x": np.full(8, 2.0, np.float32)}}, version=2)   # spare buffer: free
t0 = time.monotonic()
c.write({{"x": np.full(8, 3.0, np.float32)}}, version=3, timeout=20)  # waits for the pin
print("v3 after", round(time.monotonic() - t0, 2), flush=True)
""")
    try:
        with ch.read() as snap:
            assert snap.version == 1
            before = snap.arrays()["model.embed_tokens.weight"].copy()
            deadline = time.monotonic() + 10
            while ch.version < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.8)
            assert ch.version == 2 and p.poll() is None  # v3 is blocked by our pin
            np.testing.assert_array_equal(snap.arrays()["model.embed_tokens.weight"], before)
        line = p.stdout.readline().split()
        assert line[:2] == ["v3", "after"] and float(line[2]) >= 0.5
        with ch.read() as snap:
            assert snap.version == 3
            np.testing.assert_array_equal(snap.arrays()["x"], np.full(8, 3.0, np.float32))
    finally:
        p.kill()
        p.wait()
        ch.close()


def test_weight_channel_errors_are_clear():
    with shm.WeightChannel.create(_run_id(), 256) as ch:
        with pytest.raises(shm.ShmError, match="nothing published"), ch.read():
            pass
        with pytest.raises(ValueError, match="'big' does not fit"):
            ch.write({"big": np.zeros(1000, np.float32)}, version=1)
        with pytest.raises(ValueError, match="cast"):
            ch.write({"a": np.zeros(2, np.float32)}, version=1, cast="int8")


def test_bf16_rounding_matches_ml_dtypes():
    if shm.BFLOAT16 is None:
        pytest.skip("ml_dtypes not installed: nothing to compare the numpy rounding with")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 1e3,
                        np.array([0.0, -0.0, np.inf, -np.inf, 1.00390625, 1.01171875,
                                  3.4e38, 1e-40], np.float32)])
    np.testing.assert_array_equal(shm.f32_to_bf16_bits(x), x.astype(shm.BFLOAT16).view(np.uint16))
    assert np.isnan(shm.f32_to_bf16_bits(np.array([np.nan], np.float32)).view(shm.BFLOAT16)[0])


def test_segment_larger_than_dev_shm_is_a_clear_error():
    free = os.statvfs(shm.SHM_DIR)
    too_big = free.f_bavail * free.f_frsize + (1 << 30)
    run = _run_id()
    with pytest.raises(shm.ShmError, match="MiB free"):
        shm.RolloutBuffer.create(run, num_slots=1, slot_capacity=too_big)
    assert shm.list_segments(run) == []


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

    with shm.RolloutBuffer.create(_run_id(), num_slots=3, slot_capacity=1 << 16) as buf:
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


# --------------------------------------------------------------------------- streaming writes

def test_streaming_write_from_iterator_and_views():
    w1, w2 = _weights(1), _weights(2)
    with shm.WeightChannel.create(_run_id(), 1 << 20) as ch:
        consumed = []

        def stream():  # a generator: nothing but the pair being copied is held
            for k, v in w1.items():
                consumed.append(k)
                assert ch.version == -1  # not published while tensors are still coming
                yield k, v

        assert ch.write(stream(), version=1) == sum(v.nbytes for v in w1.values())
        assert consumed == list(w1) and ch.version == 1
        with ch.writer(version=2) as w:
            for k, v in w2.items():
                dst = w.view(k, v.shape, v.dtype)
                assert _addr_in(dst, ch._seg.buf) and dst.flags.writeable
                dst[...] = v
            assert ch.version == 1
        assert w.nbytes == sum(v.nbytes for v in w2.values())
        with ch.read() as snap:
            assert snap.version == 2 and [i.name for i in snap.manifest] == list(w2)
            for k, v in snap.items():
                assert v.dtype == w2[k].dtype
                np.testing.assert_array_equal(v, w2[k])


def test_streaming_writer_that_fails_publishes_nothing():
    with shm.WeightChannel.create(_run_id(), 1 << 20) as ch:
        ch.write(_weights(1), version=1)

        def broken():
            yield "model.embed_tokens.weight", _weights(2)["model.embed_tokens.weight"]
            raise RuntimeError("export failed")

        with pytest.raises(RuntimeError, match="export failed"):
            ch.write(broken(), version=2)
        with pytest.raises(ValueError, match="'a' written twice"):
            ch.write([("a", np.zeros(2)), ("a", np.ones(2))], version=2)
        with shm.WeightChannel.create(_run_id(), 64) as small, \
                pytest.raises(ValueError, match="'big' does not fit .* 64 bytes per buffer"):
            small.write(iter([("big", np.zeros(17, np.float32))]), version=1)
        assert ch.version == 1
        with ch.read() as snap:
            for k, v in _weights(1).items():
                np.testing.assert_array_equal(snap.arrays()[k], v)
        ch.write(iter(_weights(3).items()), version=2)  # the spare buffer is reusable
        with ch.read() as snap:
            assert snap.version == 2
            np.testing.assert_array_equal(snap.arrays()["position_ids"], np.arange(17))


def test_streaming_writer_killed_mid_write_never_publishes_a_torn_version():
    run = _run_id()
    ch = shm.WeightChannel.create(run, 1 << 22)
    big = np.arange(1 << 18, dtype=np.float32)
    p = _spawn(f"""
import time, numpy as np
from rollout import shm
c = shm.WeightChannel.attach({ch.name!r})
c.write({{"a": np.zeros(1 << 18, np.float32), "b": np.zeros(4, np.float32)}}, version=1)
def stream():
    yield "a", np.arange(1 << 18, dtype=np.float32)
    print("MID", flush=True)
    time.sleep(60)
    yield "b", np.ones(4, np.float32)
c.write(stream(), version=2)
""")
    try:
        assert p.stdout.readline().strip() == "MID", p.stderr.read()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
        # The new "a" really landed in the spare buffer (the writer was mid-version) ...
        spare = np.ndarray(big.shape, np.float32, ch._seg.buf, ch._data_off(1))
        np.testing.assert_array_equal(spare, big)
        # ... yet readers still get version 1, whole, and learn that the writer died.
        assert ch.version == 1
        with ch.read() as snap:
            assert snap.version == 1
            np.testing.assert_array_equal(snap.arrays()["a"], np.zeros(1 << 18, np.float32))
        with pytest.raises(shm.WriterDiedError, match=f"writer pid {p.pid} died"):
            ch.wait_version(2, timeout=10)
        ch.write(iter([("a", big), ("b", np.ones(4, np.float32))]), version=2)  # a restart
        with ch.read() as snap:
            assert snap.version == 2
            np.testing.assert_array_equal(snap.arrays()["a"], big)
    finally:
        p.kill()
        p.wait()
        ch.close()
    assert shm.list_segments(run) == []
