"""rollout.contract.procs on real processes: liveness of live, zombie and reaped pids, and
kill_tree reaching a whole tree, including a grandchild that left for its own session."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from rollout.contract.procs import descendants, kill_tree, pid_alive
from tests.helpers.shm_peers import wait_dead

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")

# A child in its own session with two sleeping grandchildren: one in its process group, one
# in a session of its own (out of reach of killpg). Prints their pids.
TREE_SRC = """
import subprocess, sys
sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
a = subprocess.Popen(sleep)
b = subprocess.Popen(sleep, start_new_session=True)
print(a.pid, b.pid, flush=True)
a.wait()
"""



def test_pid_alive_live_zombie_and_reaped():
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(-1)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(p.pid)
        p.kill()
        deadline = time.monotonic() + 5
        while pid_alive(p.pid) and time.monotonic() < deadline:  # a zombie until reaped
            time.sleep(0.02)
        assert not pid_alive(p.pid) and p.poll() is not None  # zombie: already counts as dead
    finally:
        p.kill()
        p.wait()
    assert not pid_alive(p.pid)  # reaped: gone


def test_descendants_and_kill_tree_reach_the_whole_tree():
    p = subprocess.Popen([sys.executable, "-c", TREE_SRC], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        a, b = (int(x) for x in p.stdout.readline().split())
        tree = descendants(p.pid)
        assert {a, b} <= set(tree) and p.pid not in tree
        assert descendants(a) == [] and os.getpid() not in tree
        assert os.getpgid(b) != p.pid  # out of the child's process group
        kill_tree(p.pid, p.pid)
        assert wait_dead([p.pid, a, b]) == []
    finally:
        p.kill()
        p.wait()


def test_kill_tree_of_a_dead_process_is_quiet():
    p = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    p.wait()
    kill_tree(p.pid, p.pid)  # no such process or group: nothing to do, no error
    assert descendants(p.pid) == []
