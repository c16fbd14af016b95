"""Segment ownership and clean-up across real processes: an owner's segments go when it
exits, is terminated or is SIGKILLed (the janitor), an attacher's death leaves nothing, stale
segments of dead owners are removed, and bad names or a full /dev/shm are clear errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rollout.contract.ring_buffer import RolloutBuffer
from rollout.contract.segments import (
    SHM_DIR,
    ShmError,
    cleanup_stale,
    list_segments,
    segment_name,
)
from rollout.contract.weight_channel import WeightChannel
from tests.helpers.shm_peers import ROOT, run_id, spawn, wait_gone

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR),
                                reason="needs /dev/shm (Linux POSIX shared memory)")


OWNER_SRC = """
import sys, time, numpy as np
from rollout.contract.ring_buffer import RolloutBuffer
from rollout.contract.weight_channel import WeightChannel
b = RolloutBuffer.create(RUN, num_slots=2, slot_capacity=4096)
c = WeightChannel.create(RUN, 1 << 16)
c.write({"w": np.ones(4, np.float32)}, version=1)
print(b.name, c.name, flush=True)
"""


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "exit"])
def test_owner_death_leaves_no_segments(how):
    run = run_id()
    # A main loop that wakes up: a process-directed signal may be taken by another thread (numpy's
    # OpenBLAS pool), and Python runs its handler only when the main thread runs again.
    wait = "for _ in range(600): time.sleep(0.1)"
    tail = {"sigkill": wait, "sigterm": wait, "exit": "sys.exit(0)"}[how]
    p = spawn(OWNER_SRC.replace("RUN", repr(run)) + tail)
    try:
        names = p.stdout.readline().split()
        assert len(names) == 2 and sorted(names) == list_segments(run) or how == "exit"
        if how != "exit":
            os.kill(p.pid, signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        p.wait(10)
        assert wait_gone(run) == [], f"leaked after {how}"
    finally:
        p.kill()
        p.wait()


def test_attacher_sigkill_leaves_no_segments():
    run = run_id()
    buf = RolloutBuffer.create(run, num_slots=2, slot_capacity=4096)
    ch = WeightChannel.create(run, 1 << 16)
    ch.write({"w": np.ones(4, np.float32)}, version=1)
    p = spawn(f"""
import time
from rollout.contract.ring_buffer import RolloutBuffer
from rollout.contract.weight_channel import WeightChannel
b = RolloutBuffer.attach({buf.name!r}); b.open_writer()
c = WeightChannel.attach({ch.name!r})
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
    assert list_segments(run) == []


def test_cleanup_stale_removes_only_dead_owners():
    run = run_id()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = segment_name(run, "buf", owner_pid=p.pid)
    with open(os.path.join(SHM_DIR, dead), "wb") as f:
        f.write(b"\0" * 64)
    live = RolloutBuffer.create(run, num_slots=1, slot_capacity=1024)
    try:
        assert cleanup_stale(run) == [dead]
        assert list_segments(run) == [live.name]
    finally:
        live.close()


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="run_id"):
        segment_name("bad/run", "buf")
    with pytest.raises(ShmError, match="does not exist"):
        RolloutBuffer.attach("cure-nosuchrun-buf-1")


def test_segment_larger_than_dev_shm_is_a_clear_error():
    free = os.statvfs(SHM_DIR)
    too_big = free.f_bavail * free.f_frsize + (1 << 30)
    run = run_id()
    with pytest.raises(ShmError, match="MiB free"):
        RolloutBuffer.create(run, num_slots=1, slot_capacity=too_big)
    assert list_segments(run) == []


@pytest.mark.parametrize("how", ["path", "module"])
def test_janitor_unlinks_what_a_dead_owner_left(tmp_path, how):
    """The janitor alone (by file path under -S, as segments starts it, or with -m): after
    its owner dies it unlinks the names added and not deleted, and nothing else."""
    from rollout.contract import segments

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    for n in ("kept", "deleted", "never"):
        (tmp_path / n).write_bytes(b"x")
    cmd = ([sys.executable, "-S", segments.JANITOR_PATH] if how == "path"
           else [sys.executable, "-m", "rollout.contract.janitor"])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    j = subprocess.Popen(cmd + [str(owner.pid), str(tmp_path)], stdin=subprocess.PIPE, env=env)
    try:
        j.stdin.write(b"add kept\nadd deleted\ndel deleted\n")
        j.stdin.flush()
        time.sleep(0.3)
        assert j.poll() is None and (tmp_path / "kept").exists()  # the owner is alive
        owner.kill()
        owner.wait()
        assert j.wait(10) == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["deleted", "never"]
    finally:
        owner.kill()
        owner.wait()
        j.kill()
        j.wait()


def test_janitor_quits_when_told():
    from rollout.contract import segments

    j = segments.start_janitor(os.getpid())
    try:
        j.stdin.write(b"quit\n")
        j.stdin.flush()
        assert j.wait(10) == 0
    finally:
        j.kill()
        j.wait()
