"""Process helpers shared by the learner and the rollout side: liveness and process trees.

Liveness is by pid and counts zombies as dead (a killed child that nobody reaped yet is
gone for our purposes). Trees are read from /proc (Linux). Standard library only: the
janitor (:mod:`.janitor`) imports this module in a bare interpreter.
"""
from __future__ import annotations

import collections
import os
import signal

__all__ = ["descendants", "kill_tree", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs (macOS): kill(0) is all we have
        return True
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(b")") + 2:].split()
        kids[int(fields[1])].append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid`` (from /proc)."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(pid: int, pgid: int | None = None) -> None:
    """SIGKILL ``pid``, every descendant of it, and process group ``pgid`` (if given)."""
    victims = descendants(pid)
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in [pid] + victims:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
