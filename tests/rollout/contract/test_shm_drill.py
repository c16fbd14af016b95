"""Fault drill: /dev/shm too small for the ring buffer or the weight channel at start.

Creating either segment fails at once with one line naming the segment, the MiB it needs and
the MiB free where it would live, before anything is mapped or written, and leaves no segment
behind. Drilled on a real 4 MiB tmpfs standing in for /dev/shm (root only: it mounts one), and
on the real /dev/shm with a request larger than what it has free (anyone)."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from rollout.contract import segments
from rollout.contract.ring_buffer import RolloutBuffer
from rollout.contract.segments import ShmError, list_segments
from rollout.contract.weight_channel import WeightChannel
from tests.helpers.shm_peers import run_id

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not os.path.isdir(segments.SHM_DIR),
                                 reason="needs /dev/shm (Linux POSIX shared memory)")]

MESSAGE = re.compile(r"shared-memory segment '(cure-[\w-]+)': needs ([\d.]+) MiB but (\S+) has "
                     r"([\d.]+) MiB free \(in Docker raise --shm-size\)")
MiB = 1 << 20


def _create(kind: str, run: str, nbytes: int):
    if kind == "ring buffer":
        return RolloutBuffer.create(run, num_slots=2, slot_capacity=nbytes // 2)
    return WeightChannel.create(run, nbytes // 2)


def _check_message(err: ShmError, kind: str, where: str, free_mib: float, at_least_mib: float,
                   tol_mib: float = 0.2):
    text = str(err)
    assert "\n" not in text, text
    m = MESSAGE.fullmatch(text)
    assert m, text
    name, need, shown_dir, free = m.groups()
    assert ("-buf-" if kind == "ring buffer" else "-weights-") in name
    assert shown_dir == where
    assert float(need) >= at_least_mib - 0.05  # the message shows 0.1 MiB
    assert abs(float(free) - free_mib) <= tol_mib, (free, free_mib)


@pytest.fixture
def small_shm(tmp_path, monkeypatch):
    """A 4 MiB tmpfs as the segment directory."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root); the /dev/shm "
                    "variant below runs for everyone")
    mnt = tmp_path / "shm"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=1777", "tmpfs", str(mnt)],
                   check=True)
    monkeypatch.setattr(segments, "SHM_DIR", str(mnt))
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("kind", ["ring buffer", "weight channel"])
def test_too_small_tmpfs_is_one_line_naming_need_and_free(small_shm, kind):
    run = run_id()
    with pytest.raises(ShmError) as e:
        _create(kind, run, 16 * MiB)
    _check_message(e.value, kind, small_shm, free_mib=4.0, at_least_mib=16.0)
    assert os.listdir(small_shm) == []       # nothing left behind, nothing allocated
    small = _create(kind, run, 256 << 10)     # what fits still works
    small.close()
    assert os.listdir(small_shm) == []


def test_shm_filled_between_check_and_allocation(small_shm, monkeypatch):
    """The free-space check passes, then the space is gone (another process took it) when the
    segment is backed: posix_fallocate fails with ENOSPC, and the error is the same one line,
    with nothing left behind."""
    real = os.statvfs
    calls = []

    def roomy_once(path):
        calls.append(path)
        st = real(path)
        if len(calls) > 1:
            return st
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree,
                                  1 << 40, st.f_files, st.f_ffree, st.f_favail, st.f_flag,
                                  st.f_namemax))

    monkeypatch.setattr(segments.os, "statvfs", roomy_once)
    with pytest.raises(ShmError) as e:
        _create("ring buffer", run_id(), 16 * MiB)
    _check_message(e.value, "ring buffer", small_shm, free_mib=4.0, at_least_mib=16.0)
    assert len(calls) == 2
    assert os.listdir(small_shm) == []


@pytest.mark.parametrize("kind", ["ring buffer", "weight channel"])
def test_real_dev_shm_too_small(kind):
    st = os.statvfs(segments.SHM_DIR)
    free = st.f_bavail * st.f_frsize
    run = run_id()
    with pytest.raises(ShmError) as e:
        _create(kind, run, free + 512 * MiB)
    # Other processes (tests on other workers, too) take and give back /dev/shm meanwhile, so
    # the free figure is only bounded by the size here; the tmpfs drills above check it exactly.
    size_mib = st.f_blocks * st.f_frsize / MiB
    _check_message(e.value, kind, segments.SHM_DIR, free_mib=size_mib / 2,
                   at_least_mib=free / MiB + 512, tol_mib=size_mib / 2 + 1)
    assert list_segments(run) == []
