"""WeightChannel across real processes: zero-copy round trips, reader pins, streaming writes,
torn or failed writes never published, bf16 rounding, and the capacity one version needs."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from rollout.contract.segments import SHM_DIR, list_segments
from rollout.contract.weight_channel import (
    BFLOAT16,
    ShmError,
    WeightChannel,
    WriterDiedError,
    f32_to_bf16_bits,
)
from tests.helpers.shm_peers import run_id, spawn, wait_gone, weights

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR),
                                reason="needs /dev/shm (Linux POSIX shared memory)")


def _addr_in(a: np.ndarray, seg_buf: np.ndarray) -> bool:
    lo = seg_buf.__array_interface__["data"][0]
    p = a.__array_interface__["data"][0]
    return lo <= p and p + a.nbytes <= lo + seg_buf.nbytes


def test_weight_channel_round_trip_across_processes_zero_copy():
    run = run_id()
    p = spawn(f"""
import sys, numpy as np
from tests.helpers.shm_peers import weights
from rollout.contract.weight_channel import WeightChannel
c = WeightChannel.create({run!r}, 1 << 20)
c.write(weights(1), version=1)
print(c.name, flush=True)
sys.stdin.readline()
c.write(weights(2), version=2)
c.write(weights(3), version=3, cast="BF16")
print("done", flush=True)
sys.stdin.readline()
""")
    try:
        name = p.stdout.readline().strip()
        ch = WeightChannel.attach(name)
        assert ch.wait_version(1, timeout=5) == 1
        with ch.read() as snap:
            got = snap.arrays()
            assert snap.version == 1
            assert [i.name for i in snap.manifest] == list(weights(1))
            for k, v in weights(1).items():
                assert got[k].dtype == v.dtype and got[k].shape == v.shape
                np.testing.assert_array_equal(got[k], v)
                assert not got[k].flags.owndata and _addr_in(got[k], ch._seg.buf)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "done"
        with ch.read() as snap:
            assert snap.version == 3
            got = snap.arrays()
            w = weights(3)
            assert {i.name: i.dtype for i in snap.manifest} == {
                "model.embed_tokens.weight": "BF16", "model.layers.0.self_attn.q_proj.bias": "BF16",
                "model.norm.weight": "BF16", "position_ids": "I32"}
            bits = f32_to_bf16_bits(w["model.embed_tokens.weight"])
            np.testing.assert_array_equal(got["model.embed_tokens.weight"].view(np.uint16), bits)
            np.testing.assert_array_equal(got["position_ids"], w["position_ids"])
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(10) == 0, p.stderr.read()
        ch.close()
    finally:
        p.kill()
        p.wait()
    assert wait_gone(run) == []


def test_weight_channel_reader_pin_blocks_overwrite():
    run = run_id()
    ch = WeightChannel.create(run, 1 << 20)
    ch.write(weights(1), version=1)
    p = spawn(f"""
import sys, time, numpy as np
from rollout.contract.weight_channel import WeightChannel
c = WeightChannel.attach({ch.name!r})
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
    with WeightChannel.create(run_id(), 256) as ch:
        with pytest.raises(ShmError, match="nothing published"), ch.read():
            pass
        with pytest.raises(ValueError, match="'big' does not fit"):
            ch.write({"big": np.zeros(1000, np.float32)}, version=1)
        with pytest.raises(ValueError, match="cast"):
            ch.write({"a": np.zeros(2, np.float32)}, version=1, cast="int8")


def test_bf16_rounding_matches_ml_dtypes():
    if BFLOAT16 is None:
        pytest.skip("ml_dtypes not installed: nothing to compare the numpy rounding with")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 1e3,
                        np.array([0.0, -0.0, np.inf, -np.inf, 1.00390625, 1.01171875,
                                  3.4e38, 1e-40], np.float32)])
    np.testing.assert_array_equal(f32_to_bf16_bits(x), x.astype(BFLOAT16).view(np.uint16))
    assert np.isnan(f32_to_bf16_bits(np.array([np.nan], np.float32)).view(BFLOAT16)[0])


# --------------------------------------------------------------------------- streaming writes

def test_streaming_write_from_iterator_and_views():
    w1, w2 = weights(1), weights(2)
    with WeightChannel.create(run_id(), 1 << 20) as ch:
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
    with WeightChannel.create(run_id(), 1 << 20) as ch:
        ch.write(weights(1), version=1)

        def broken():
            yield "model.embed_tokens.weight", weights(2)["model.embed_tokens.weight"]
            raise RuntimeError("export failed")

        with pytest.raises(RuntimeError, match="export failed"):
            ch.write(broken(), version=2)
        with pytest.raises(ValueError, match="'a' written twice"):
            ch.write([("a", np.zeros(2)), ("a", np.ones(2))], version=2)
        with WeightChannel.create(run_id(), 64) as small, \
                pytest.raises(ValueError, match="'big' does not fit .* 64 bytes per buffer"):
            small.write(iter([("big", np.zeros(17, np.float32))]), version=1)
        assert ch.version == 1
        with ch.read() as snap:
            for k, v in weights(1).items():
                np.testing.assert_array_equal(snap.arrays()[k], v)
        ch.write(iter(weights(3).items()), version=2)  # the spare buffer is reusable
        with ch.read() as snap:
            assert snap.version == 2
            np.testing.assert_array_equal(snap.arrays()["position_ids"], np.arange(17))


def test_streaming_writer_killed_mid_write_never_publishes_a_torn_version():
    run = run_id()
    ch = WeightChannel.create(run, 1 << 22)
    big = np.arange(1 << 18, dtype=np.float32)
    p = spawn(f"""
import time, numpy as np
from rollout.contract.weight_channel import WeightChannel
c = WeightChannel.attach({ch.name!r})
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
        with pytest.raises(WriterDiedError, match=f"writer pid {p.pid} died"):
            ch.wait_version(2, timeout=10)
        ch.write(iter([("a", big), ("b", np.ones(4, np.float32))]), version=2)  # a restart
        with ch.read() as snap:
            assert snap.version == 2
            np.testing.assert_array_equal(snap.arrays()["a"], big)
    finally:
        p.kill()
        p.wait()
        ch.close()
    assert list_segments(run) == []


# --------------------------------------------------------------------------- capacity

def test_required_capacity_is_exactly_what_one_version_needs():
    # Sizes chosen so the need ends one byte past a 64-byte boundary: one byte less is then
    # too little even after create() rounds the capacity up to the alignment.
    tensors = {"a": np.zeros(16, np.float32), "b": np.zeros(3, np.int8),
               "c": np.zeros((2, 3), np.float16), "d": np.zeros(1, np.uint8)}
    specs = [(k, v.shape, v.dtype) for k, v in tensors.items()]
    need = WeightChannel.required_capacity(specs)
    assert need == 64 + 64 + 64 + 1  # a, b and c each start on a 64-byte boundary
    assert WeightChannel.required_capacity(tensors) == need  # a mapping of arrays works too
    with WeightChannel.create(run_id(), need) as ch:
        assert ch.write(tensors, version=1) == sum(v.nbytes for v in tensors.values())
    with WeightChannel.create(run_id(), need - 1) as ch, \
            pytest.raises(ValueError, match="'d' does not fit"):
        ch.write(tensors, version=1)


def test_required_capacity_follows_cast_and_safetensors_names():
    specs = [("w", (10, 7), np.float32), ("ids", (5,), np.int64), ("h", (3,), "BF16")]
    # The cast halves the float tensor only (the writer casts floating tensors only):
    # w 140 bytes at 0, ids 40 at 192, h 6 at 256.
    need = WeightChannel.required_capacity(specs, cast="BF16")
    assert need == 256 + 6
    with WeightChannel.create(run_id(), need) as ch:
        with ch.writer(version=1, cast="BF16") as w:
            w.add("w", np.ones((10, 7), np.float32))
            w.add("ids", np.arange(5))
            w.view("h", (3,), "BF16")[...] = 0
        with ch.read() as snap:
            assert [(i.name, i.dtype, i.offset) for i in snap.manifest] == [
                ("w", "BF16", 0), ("ids", "I64", 192), ("h", "BF16", 256)]
    assert WeightChannel.required_capacity(specs) == 384 + 6  # w 280 at 0, ids 40 at 320
