"""Per-worker cgroups (root only): bound the memory and the number of tasks of everything a
worker's programs start, which per-process rlimits cannot (RLIMIT_AS is per process, so N
processes may use N times the limit), and count the OOM kills so that a program killed by the
cgroup's OOM killer gets MEMORY_LIMIT. cgroup v2 (unified) or v1 (memory + pids hierarchies).
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("sandbox")
_ROOT = "/sys/fs/cgroup"


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(",") if controllers else [""]:
                    out[c] = path
    except OSError:
        pass
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


_swept = False


def _sweep_stale(parent: str) -> None:
    """Remove empty cgroups left by sandboxes of processes that died without closing."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) >= 3 and name.startswith("cure-sandbox-") and parts[2].isdigit() \
                and not os.path.exists(f"/proc/{parts[2]}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


class WorkerCgroup:
    """One cgroup (per controller hierarchy) holding one worker and its programs."""

    def __init__(self, dirs: list[str], oom_file: str, oom_key: str) -> None:
        self.dirs = dirs
        self.oom_file = oom_file
        self.oom_key = oom_key.encode()
        self._oom_fd = -1      # kept open: read after every execution, with one pread
        try:
            self._oom_fd = os.open(oom_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
        self.last_oom = self.oom_kills()

    @classmethod
    def create(cls, name: str, memory_bytes: int, tasks: int) -> "WorkerCgroup | None":
        """A new cgroup, or None where cgroups cannot be managed (not root, read-only, none)."""
        if os.geteuid() != 0:
            return None
        paths = _own_paths()
        made: list[str] = []
        try:
            if os.path.exists(os.path.join(_ROOT, "cgroup.controllers")) and "" in paths:
                parent = os.path.join(_ROOT, paths[""].lstrip("/"))
                with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                    enabled = f.read().split()
                if "memory" not in enabled:
                    return None
                d = os.path.join(parent, name)
                os.mkdir(d)
                made.append(d)
                _write(os.path.join(d, "memory.max"), str(memory_bytes))
                for fname, value in (("memory.swap.max", "0"), ("pids.max", str(tasks))):
                    if os.path.exists(os.path.join(d, fname)):
                        _write(os.path.join(d, fname), value)
                return cls(made, os.path.join(d, "memory.events"), "oom_kill")
            if "memory" not in paths or not os.path.isdir(os.path.join(_ROOT, "memory")):
                return None
            d = os.path.join(_ROOT, "memory", paths["memory"].lstrip("/"), name)
            global _swept
            if not _swept:
                _swept = True
                _sweep_stale(os.path.dirname(d))
                if "pids" in paths:
                    _sweep_stale(os.path.join(_ROOT, "pids", paths["pids"].lstrip("/")))
            os.mkdir(d)
            made.append(d)
            _write(os.path.join(d, "memory.limit_in_bytes"), str(memory_bytes))
            try:
                _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(memory_bytes))
            except OSError:
                pass   # no swap accounting
            if "pids" in paths and os.path.isdir(os.path.join(_ROOT, "pids")):
                p = os.path.join(_ROOT, "pids", paths["pids"].lstrip("/"), name)
                os.mkdir(p)
                made.append(p)
                _write(os.path.join(p, "pids.max"), str(tasks))
            return cls(made, os.path.join(d, "memory.oom_control"), "oom_kill")
        except OSError as e:
            log.debug("sandbox: no cgroup (%s)", e)
            for d in reversed(made):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            return None

    def add(self, pid: int) -> None:
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def oom_kills(self) -> int:
        """The cgroup's OOM kill counter (0 where it cannot be read)."""
        try:
            data = os.pread(self._oom_fd, 4096, 0)
            for line in data.splitlines():
                key, _, value = line.partition(b" ")
                if key == self.oom_key:
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def oom_since_last(self) -> bool:
        """Whether the OOM killer struck since the previous call."""
        now = self.oom_kills()
        hit = now > self.last_oom
        self.last_oom = now
        return hit

    def remove(self, timeout: float = 2.0) -> None:
        """Remove the (emptied) cgroup; its processes may take a moment to go."""
        if self._oom_fd >= 0:
            os.close(self._oom_fd)
            self._oom_fd = -1
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        log.debug("sandbox: could not remove cgroup %s", d)
                        break
                    time.sleep(0.02)
