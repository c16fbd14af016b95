"""Process accounting from /proc (Linux): used to check that no program process outlives its run."""
from __future__ import annotations

import os


def _stat(pid: str) -> tuple[int, int] | None:
    """(ppid, real uid) of a process, or None if it vanished."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return None
    ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
    uid = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith(b"Uid:"))
    return ppid, uid


def process_table() -> dict[int, tuple[int, int]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _stat(name)
            if info is not None:
                table[int(name)] = info
    return table


def descendants(root: int | None = None) -> set[int]:
    """Pids of every live process below ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def tasks_of_uid(uid: int) -> int:
    """Number of tasks (threads included, as RLIMIT_NPROC counts them) whose real uid is
    ``uid``, among those this process can see."""
    n = 0
    for pid, (_, owner) in process_table().items():
        if owner == uid:
            try:
                n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n
