"""Soak of the sandbox pool: many executions of real and hostile programs, then a leak audit.

    python benchmarks/sandbox_soak.py [--executions 20000] [--workers N] [--isolation auto]

Runs real stdin/stdout solutions (correct, wrong, crashing) between hostile programs (fork and
thread bombs, memory hogs, infinite loops, output floods, fd exhaustion, threads, writes to /tmp
and /dev/shm, killing the parent or everything, closing stdout, refused system calls, children
left behind) through ``Sandbox.run_matrices`` while a second thread uses ``Sandbox.run``; real
programs alone, in the same run, give the baseline rate. Checks, because a pool that runs for
days must not leak per execution: every execution gets its program's verdict (a hostile one
never SANDBOX_ERROR, the real ones behind it still pass) and no worker fails or restarts; from
the end of a warm-up to the end, the orchestrator (this process) and the workers (bwrap, its
init and the python worker, summed over the pool) keep their fds, threads, RSS and (workers)
mount tables within the bounds below; nothing is left: no process below us but the workers,
none as a program uid, none after close, no new host mount (none under the sandbox's
directories), no cgroup after close, no file of a program's /tmp or /dev/shm in the host's.

Ends with ``RESULT`` lines (``RESULT <name> ours=<x> baseline=<y> ratio=<r>``) and exits 1 if
any check fails. ``tests/sandbox/test_soak.py`` runs a short version of ``soak()``.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import glob
import os
import random
import secrets
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sandbox import Limits, Sandbox, TestCase, Verdict
from sandbox import isolation as sb_isolation
from sandbox.procs import descendants, process_table

# ------------------------------------------------------------------ bounds (warm-up -> end)
# The orchestrator holds fixed fds per worker (two pipes, its stderr file, the cgroup's OOM
# counter) and one driver thread per worker; a replaced worker's are closed first: no growth.
ORCH_FD_GROWTH = 0
ORCH_THREAD_GROWTH = 0
# malloc's per-thread arenas and Python's free lists settle over the first few thousand
# executions (measured: +0.7 to +1.8 MiB, flat afterwards); 4 MiB catches a leak of 200 bytes
# per execution over 20,000 executions (4 KiB per execution over the test's 1,000).
ORCH_RSS_GROWTH_MIB = 4.0
# An idle worker holds its pipes and memfds, nothing per execution: no growth (pool totals, so
# that a replaced worker, a new process, still compares).
WORKER_FD_GROWTH = 0
WORKER_THREAD_GROWTH = 0
# Per worker: the code cache is bounded (64 programs, 1 MiB) and primed by the warm-up.
WORKER_RSS_GROWTH_MIB = 4.0
# Per worker: up to PROC_BATCH children's /proc mounts stay stacked until one unmount drops
# them all, so two moments' counts differ by at most one batch.
WORKER_MOUNT_GROWTH = sb_isolation.PROC_BATCH
MAX_WORKER_RESTARTS = 0   # a hostile program never takes a worker down

TL = Verdict.TIME_LIMIT
# CPU limit of the programs meant to time out (killed at twice this, wall), as in the
# adversarial suite; the wall clock covers the child's set-up too (a kill before the program
# starts is retried on the same worker: SandboxStats.setup_kills).
HOSTILE_TL_S = 0.25
LIMITS = Limits(time_s=2.0, wall_factor=2.0, memory_mb=256, output_mb=1.0, processes=16,
                open_files=64, tmp_mb=8, input_mb=4.0)
REAL_PER_HOSTILE = 5  # real executions scheduled after each hostile one
SLOW_EVERY = 3        # the slow hostile programs (a quarter second or more) come every 3rd round
ROUND = 160           # executions per run_matrices call
SIDE_EVERY = 8        # every 8th execution of a round goes through Sandbox.run on another thread
TAG = "soak_probe_" + secrets.token_hex(4)   # names of the files programs write to /tmp, /dev/shm


@dataclasses.dataclass(frozen=True)
class Program:
    """A program of the mix and its verdict; ``needs``: what that verdict relies on."""
    name: str
    source: str
    verdict: Verdict
    stdin: str = ""
    expected: str = ""
    time_limit_s: float | None = None
    needs: tuple[str, ...] = ()
    hostile: bool = True
    every: int = 1          # scheduled in every ``every``-th round of the hostile programs


def _h(name: str, source: str, verdict: Verdict, expected: str = "", stdin: str = "",
       needs: tuple[str, ...] = (), slow: bool = False) -> Program:
    return Program(name, source, verdict, stdin, expected, HOSTILE_TL_S if verdict == TL else None,
                   needs, every=SLOW_EVERY if slow or verdict == TL else 1)


HOSTILE: tuple[Program, ...] = (
    _h("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
       "        pass\n", TL, needs=("own_uid",)),
    _h("thread_bomb", "import threading, time\nwhile True:\n    try:\n        threading.Thread("
       "target=time.sleep, args=(100,), daemon=True).start()\n    except Exception:\n"
       "        pass\n", TL, needs=("own_uid",)),
    _h("infinite_loop", "while True:\n    pass\n", TL),
    _h("sleeper", "import time\ntime.sleep(100)\n", TL),
    _h("sigterm_ignored", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
       "while True:\n    time.sleep(0.01)\n", TL),
    _h("non_daemon_thread", "import threading, time\nthreading.Thread(target=time.sleep, "
       "args=(100,)).start()\nprint(42)\n", TL, "42"),
    _h("alloc_8gb", "x = bytearray(8 << 30)\nprint(len(x))\n", Verdict.MEMORY_LIMIT),
    _h("memory_grow", "xs = []\nwhile True:\n    xs.append(bytearray(16 << 20))\n",
       Verdict.MEMORY_LIMIT, slow=True),
    _h("children_hog", "import os, time\nkids = []\nfor i in range(4):\n    pid = os.fork()\n"
       "    if pid == 0:\n        x = bytearray(150 << 20)\n"
       "        for j in range(0, len(x), 4096):\n            x[j] = 1\n"
       "        time.sleep(0.3)\n        os._exit(0)\n    kids.append(pid)\n"
       "codes = [os.waitpid(k, 0)[1] for k in kids]\nraise SystemExit(1 if any(codes) else 0)\n",
       Verdict.MEMORY_LIMIT, needs=("cgroups",), slow=True),
    *(_h(f"{f}_flood", f"import sys\nwhile True:\n    sys.{f}.write('x' * 4096)\n",
         Verdict.OUTPUT_LIMIT) for f in ("stdout", "stderr")),
    _h("open_many_files", "import os, socket\nheld = []\nfor make in (lambda: open('/dev/null'), "
       "os.pipe, socket.socketpair, lambda: os.open('.', os.O_RDONLY)):\n    try:\n"
       "        while True:\n            held.append(make())\n    except OSError:\n"
       "        pass\nprint(len(held) >= 40)\n", Verdict.OK, "True"),
    _h("threads_compute", "import threading\nout = [0] * 8\ndef work(i):\n"
       "    out[i] = sum(range(i * 1000))\nts = [threading.Thread(target=work, args=(i,)) "
       "for i in range(8)]\nfor t in ts:\n    t.start()\nfor t in ts:\n    t.join()\n"
       "print(sum(out))\n", Verdict.OK, str(sum(sum(range(i * 1000)) for i in range(8)))),
    _h("write_tmp_and_shm", "import os, sys\ntag = sys.stdin.read()\n"
       "for d in ('/tmp', '/dev/shm'):\n    os.makedirs(f'{d}/sub_{tag}/deeper', exist_ok=True)\n"
       "    open(f'{d}/{tag}', 'w').write(tag)\n"
       "    open(f'{d}/sub_{tag}/deeper/f', 'w').write(tag)\n"
       "print(len(os.listdir('/tmp')), len(os.listdir('/dev/shm')))\n", Verdict.OK, "2 2", TAG,
       needs=("namespaces",)),
    _h("fill_tmp", "try:\n    with open('/tmp/big', 'wb') as f:\n        for _ in range(64):\n"
       "            f.write(b'x' * (1 << 20))\n    print('wrote')\nexcept OSError:\n"
       "    print('full')\n", Verdict.OK, "full", needs=("namespaces",)),
    _h("look_at_tmp", "import os\nst = os.statvfs('/tmp')\nprint(sorted(os.listdir('/tmp')), "
       "sorted(os.listdir('/dev/shm')), st.f_bfree == st.f_blocks)\n", Verdict.OK, "[] [] True",
       needs=("namespaces",)),
    *(_h(name, f"import os\ntry:\n    os.kill({pid}, 9)\nexcept OSError:\n    pass\nprint(42)\n",
         Verdict.OK, "42", needs=("separated",))
      for name, pid in (("kill_parent", "os.getppid()"), ("kill_everything", "-1"))),
    _h("close_stdout", "import sys\nprint(42)\nsys.stdout.close()\n", Verdict.OK, "42"),
    _h("close_fd_1", "import os\nos.close(1)\nprint(42)\n", Verdict.RUNTIME_ERROR),  # exit 120
    _h("refused_syscalls", "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
       "calls = [('unshare', (0x10000000,)), ('setns', (-1, 0)), ('mount', (b'none', b'/tmp', "
       "b'tmpfs', 0, None)), ('umount2', (b'/tmp', 2)), ('ptrace', (0, 0, 0, 0))]\nout = []\n"
       "for name, args in calls:\n    ctypes.set_errno(0)\n    r = getattr(libc, name)(*args)\n"
       "    out.append(errno.errorcode.get(ctypes.get_errno(), 'none') if r == -1 else 'ran')\n"
       "print(' '.join(out))\n", Verdict.OK, " ".join(["EPERM"] * 5), needs=("seccomp",)),
    _h("setsid_daemon", "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
       "    if os.fork() == 0:\n        time.sleep(100)\n    os._exit(0)\nprint(42)\n",
       Verdict.OK, "42"),
    _h("shell_out", "import subprocess\nsubprocess.Popen(['sleep', '100'])\n"
       "print(subprocess.run(['sh', '-c', 'echo 42'], capture_output=True, text=True)"
       ".stdout.strip())\n", Verdict.OK, "42"),
    _h("zombies", "import os\nfor _ in range(5):\n    if os.fork() == 0:\n        os._exit(0)\n"
       "print(42)\n", Verdict.OK, "42"),
    _h("stack_overflow", "import sys\nsys.setrecursionlimit(10**9)\nclass A:\n"
       "    def __getattr__(self, k):\n        return getattr(self, k)\nA().x\n",
       Verdict.RUNTIME_ERROR),
    _h("null_dereference", "import ctypes\nctypes.string_at(0)\n", Verdict.RUNTIME_ERROR),
    _h("syntax_error", "def f(:\n    return 1\n", Verdict.COMPILE_ERROR),
)

_READ = "n = int(input())\nxs = list(map(int, input().split()))\n"
REAL: tuple[tuple[Program, str], ...] = tuple(   # (program, the problem it solves)
    (Program(name, src, verdict, hostile=False), problem) for name, src, verdict, problem in (
        ("sum_ok", _READ + "print(sum(xs))\n", Verdict.OK, "sum"),
        ("sum_stdin_ok", "import sys\nprint(sum(map(int, sys.stdin.read().split()[1:])))\n",
         Verdict.OK, "sum"),
        ("sum_wrong", _READ + "print(sum(xs) + 1)\n", Verdict.WRONG_ANSWER, "sum"),
        ("sum_crash", "n = int(input())\nprint(sum(int(input().split())))\n",
         Verdict.RUNTIME_ERROR, "sum"),
        ("sort_ok", _READ + "print(*sorted(xs))\n", Verdict.OK, "sort"),
        ("sort_wrong", _READ + "print(*sorted(xs, reverse=True))\n", Verdict.WRONG_ANSWER,
         "sort")))


def _tests(seed: int) -> dict[str, list[TestCase]]:
    """Two problems (sum of a list, sort a list), four tests each, distinct values."""
    rng = random.Random(seed)
    out: dict[str, list[TestCase]] = {"sum": [], "sort": []}
    for n in (5, 30, 120, 400):
        xs = rng.sample(range(-10**6, 10**6), n)
        text = f"{n}\n{' '.join(map(str, xs))}\n"
        out["sum"].append(TestCase(text, str(sum(xs))))
        out["sort"].append(TestCase(text, " ".join(map(str, sorted(xs)))))
    return out


def hostile_mix(sb: Sandbox) -> tuple[list[Program], list[str]]:
    """The hostile programs whose expected verdict holds in this pool, and the names skipped."""
    have = {"namespaces": sb.isolation == "namespaces", "seccomp": sb.syscall_filtered,
            "cgroups": sb.memory_cgroups,
            "own_uid": bool(sb.program_uids()),   # a uid per worker: RLIMIT_NPROC is its own
            "separated": sb.isolation != "rlimits" or bool(sb.program_uids())}  # can't signal us
    keep = [p for p in HOSTILE if all(have[n] for n in p.needs)]
    return keep, [p.name for p in HOSTILE if p not in keep]


def schedule(n: int, hostile: list[Program], tests: dict[str, list[TestCase]],
             real_only: bool = False) -> list[tuple[Program, TestCase]]:
    """``n`` executions: the hostile programs in rounds (the slow ones in every SLOW_EVERY-th),
    each followed by REAL_PER_HOSTILE real ones (cycling over every real program x test)."""
    pairs = [(p, t) for p, problem in REAL for t in tests[problem]]
    order = [p for k in range(SLOW_EVERY) for p in hostile if k % p.every == 0]
    items: list[tuple[Program, TestCase]] = []
    while len(items) < n:
        if not real_only and order and len(items) % (REAL_PER_HOSTILE + 1) == 0:
            p = order[(len(items) // (REAL_PER_HOSTILE + 1)) % len(order)]
            items.append((p, TestCase(p.stdin, p.expected)))
        else:
            items.append(pairs[len(items) % len(pairs)])
    return items


@dataclasses.dataclass
class _Tally:
    verdicts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    wrong: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    hostile: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def add(self, p: Program, got: Verdict) -> None:
        with self.lock:
            self.verdicts[got.name] += 1
            self.hostile += p.hostile
            if got != p.verdict:
                self.wrong.setdefault(p.name, collections.Counter())[got.name] += 1


def _run_items(sb: Sandbox, items: list[tuple[Program, TestCase]], tally: _Tally) -> None:
    """Every ``SIDE_EVERY``-th item through ``Sandbox.run`` on a second thread, the rest in one
    ``run_matrices`` call on this one, at the same time."""
    side = items[SIDE_EVERY - 1::SIDE_EVERY]
    main = [it for k, it in enumerate(items) if k % SIDE_EVERY != SIDE_EVERY - 1]

    def run_side() -> None:
        for p, t in side:
            tally.add(p, sb.run(p.source, t.input, p.time_limit_s, expected=t.output).verdict)

    t = threading.Thread(target=run_side, name="soak-side")
    t.start()
    try:
        res = sb.run_matrices([([p.source], [t], p.time_limit_s) for p, t in main])
        for (p, _), r in zip(main, res):
            tally.add(p, r.verdicts[0, 0])
    finally:
        t.join()


def _run_all(sb: Sandbox, items: list[tuple[Program, TestCase]], tally: _Tally,
             trend: list[tuple[int, int, int]] | None = None) -> float:
    """Runs ``items`` in rounds; returns the seconds they took. ``trend`` gets (executions
    done, orchestrator RSS KiB, workers started) at each tenth of the way (outside the timing)."""
    t0 = time.perf_counter()
    paused = 0.0
    mark = max(ROUND, len(items) // 10)
    for k in range(0, len(items), ROUND):
        _run_items(sb, items[k:k + ROUND], tally)
        done = min(k + ROUND, len(items))
        if trend is not None and (done // mark > k // mark or done == len(items)):
            t = time.perf_counter()
            trend.append((done, _rss_kib("self"), sb.stats.worker_starts))
            paused += time.perf_counter() - t
    return time.perf_counter() - t0 - paused


# ------------------------------------------------------------------ measurements
def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:   # the process is gone
        return b""


def _rss_kib(pid: int | str) -> int:
    line = next((ln for ln in _read(f"/proc/{pid}/status").splitlines()
                 if ln.startswith(b"VmRSS:")), b"VmRSS: 0 kB")
    return int(line.split()[1])


@dataclasses.dataclass(frozen=True)
class Usage:
    """One snapshot of the orchestrator and of the workers (summed over their processes)."""
    orch_fds: int
    orch_threads: int
    orch_rss_kib: int
    worker_fds: int
    worker_threads: int
    worker_rss_kib: int
    worker_mounts: int      # entries of the workers' own mount tables
    worker_procs: frozenset[int]


def worker_processes(sb: Sandbox) -> dict[int, set[int]]:
    """worker pid -> the processes of that worker: bwrap, its init, the python worker (not what
    the python worker forks: programs, or the sandbox's own short-lived helpers)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (ppid, _) in process_table().items():
        children[ppid].append(pid)
    out = {}
    for root in sb.worker_pids():
        procs, todo = set(), [root]
        while todo:
            p = todo.pop()
            procs.add(p)
            if os.path.basename(_read(f"/proc/{p}/cmdline").split(b"\0")[0]) == b"bwrap":
                todo += children.get(p, [])   # bubblewrap's own init, then the worker
        out[root] = procs
    return out


def usage(sb: Sandbox) -> Usage:
    trees = worker_processes(sb)
    pids = frozenset(p for tree in trees.values() for p in tree)
    def count(path: str) -> int:   # entries of a /proc directory (0 if the process is gone)
        try:
            return len(os.listdir(path))
        except OSError:
            return 0
    return Usage(orch_fds=count("/proc/self/fd"), orch_threads=count("/proc/self/task"),
                 orch_rss_kib=_rss_kib("self"),
                 worker_fds=sum(count(f"/proc/{p}/fd") for p in pids),
                 worker_threads=sum(count(f"/proc/{p}/task") for p in pids),
                 worker_rss_kib=sum(_rss_kib(p) for p in pids),
                 worker_mounts=sum(max(_read(f"/proc/{p}/mountinfo").count(b"\n") for p in tree)
                                   for tree in trees.values()),
                 worker_procs=pids)


def _settle(expected: set[int] | frozenset[int], timeout: float = 5.0) -> set[int]:
    """Our descendants outside ``expected``, once there are none or ``timeout`` has passed
    (the processes of a killed PID namespace take a moment to go)."""
    deadline = time.monotonic() + timeout
    while True:
        extra = descendants() - expected
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


def _describe(pids: set[int]) -> list[str]:
    return [f"{p}: " + _read(f"/proc/{p}/cmdline").replace(b"\0", b" ").decode(
        errors="replace").strip()[:80] for p in sorted(pids)]


def _mounts() -> set[tuple[str, str, str]]:
    """(mount point, fs type, source) of every mount of this mount namespace."""
    out = set()
    for line in _read("/proc/self/mountinfo").decode().splitlines():
        left, _, right = line.partition(" - ")
        rest = right.split() + ["", ""]
        out.add((left.split()[4], rest[0], rest[1]))
    return out


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclasses.dataclass
class SoakReport:
    executions: int                 # of the mixed phase
    hostile_executions: int         # of them
    real_only_executions: int       # the baseline phase
    warmup_executions: int
    mixed_s: float
    real_only_s: float
    isolation: str
    workers: int
    skipped: list[str]              # hostile programs whose verdict this pool cannot promise
    verdicts: dict[str, int]        # over the mixed phase
    mismatches: dict[str, dict[str, int]]   # program -> {verdict got instead: count}, any phase
    start: Usage
    warm: Usage
    end: Usage
    worker_restarts: int            # workers started after the pool's first ones
    infra_failures: int             # failed attempts (each retried on a fresh worker)
    sandbox_errors: int
    infra_reasons: dict[str, int]   # "program: why" -> count, for the failed attempts
    setup_kills: int                # executions killed by the clock before their program ran
    rss_trend: list[tuple[int, int, int]]   # (mixed executions, orchestrator RSS KiB, starts)
    leftover_open: list[str]        # our descendants besides the workers, pool open
    leftover_closed: list[str]      # our descendants after close
    uid_processes: list[str]        # processes running as a program uid (open or closed)
    new_mounts: list[str]           # host mounts since before the pool where the sandbox mounts
    other_mounts: list[str]         # other new host mounts (other processes'; not checked)
    leftover_cgroups: list[str]
    host_files: list[str]           # files of the programs' /tmp or /dev/shm in the host's
    checks: list[Check]

    @property
    def mixed_rate(self) -> float:
        return self.executions / self.mixed_s if self.mixed_s > 0 else 0.0

    @property
    def real_rate(self) -> float:
        return self.real_only_executions / self.real_only_s if self.real_only_s > 0 else 0.0

    def growth(self, field: str) -> int:   # end - warm of a Usage field
        return getattr(self.end, field) - getattr(self.warm, field)


def _checks(r: SoakReport) -> list[Check]:
    n = r.workers
    c = [Check("verdicts", not r.mismatches and sum(r.verdicts.values()) == r.executions,
               f"unexpected verdicts: {r.mismatches}" if r.mismatches else
               f"{sum(r.verdicts.values())} verdicts for {r.executions} executions"),
         Check("no_sandbox_errors", r.sandbox_errors == 0, f"{r.sandbox_errors} SANDBOX_ERROR"),
         Check("no_failed_attempts", r.infra_failures == 0,
               f"{r.infra_failures} failed attempts"
               + (f": {r.infra_reasons}" if r.infra_reasons else "")),
         Check("worker_restarts", r.worker_restarts <= MAX_WORKER_RESTARTS,
               f"{r.worker_restarts} worker(s) restarted (bound {MAX_WORKER_RESTARTS})")]
    for name, field, bound in (("orchestrator_fds", "orch_fds", ORCH_FD_GROWTH),
                               ("orchestrator_threads", "orch_threads", ORCH_THREAD_GROWTH),
                               ("worker_fds", "worker_fds", WORKER_FD_GROWTH),
                               ("worker_threads", "worker_threads", WORKER_THREAD_GROWTH),
                               ("worker_mounts", "worker_mounts", WORKER_MOUNT_GROWTH * n)):
        g = r.growth(field)
        c.append(Check(name, g <= bound, f"{getattr(r.warm, field)} -> "
                                         f"{getattr(r.end, field)} ({g:+d}, bound +{bound})"))
    for name, field, mib in (("orchestrator_rss", "orch_rss_kib", ORCH_RSS_GROWTH_MIB),
                             ("worker_rss", "worker_rss_kib", WORKER_RSS_GROWTH_MIB * n)):
        g = r.growth(field) / 1024
        c.append(Check(name, g <= mib, f"{getattr(r.warm, field) / 1024:.1f} -> "
                                       f"{getattr(r.end, field) / 1024:.1f} MiB "
                                       f"({g:+.2f}, bound +{mib:.1f})"))
    for name, found in (("no_leftover_processes", r.leftover_open + r.leftover_closed),
                        ("no_program_uid_processes", r.uid_processes),
                        ("no_leftover_mounts", r.new_mounts),
                        ("no_leftover_cgroups", r.leftover_cgroups),
                        ("no_program_files_on_host", r.host_files)):
        c.append(Check(name, not found, "; ".join(found[:10]) or "none"))
    return c


def _record_failures(sb: Sandbox) -> collections.Counter:
    """Counts each failed attempt of the pool (a worker that died, hung, or could not set an
    execution up; the pool restarts it and retries) as "program: reason"."""
    names = {p.source.encode(): p.name for p in HOSTILE + tuple(p for p, _ in REAL)}
    reasons: collections.Counter = collections.Counter()
    lock, orig = threading.Lock(), sb._infra_failure

    def record(index: int, inflight: collections.deque, pending: collections.deque,
               failure: str) -> None:
        name = names.get(inflight[0].program, "?") if inflight else "-"
        with lock:
            reasons[f"{name}: {failure[:160]}"] += 1
        orig(index, inflight, pending, failure)

    sb._infra_failure = record   # type: ignore[method-assign]  # the drivers look it up per call
    return reasons


def soak(executions: int = 20000, workers: int = 2, isolation: str = "auto",
         real_only_executions: int | None = None, warmup_cycles: int = 2,
         seed: int = 0) -> SoakReport:
    """Run the soak (see the module docstring) and return its measurements and checks.
    ``real_only_executions`` (default: a tenth of ``executions``, at least 200) sizes the
    baseline phase of real programs alone; ``warmup_cycles``: whole rounds of the mix before
    the "warm" snapshot."""
    if real_only_executions is None:
        real_only_executions = max(200, executions // 10)
    tests = _tests(seed)
    mounts_before = _mounts()
    before = descendants()
    sb = Sandbox(workers=workers, limits=LIMITS, isolation=isolation)
    try:
        start = usage(sb)
        hostile, skipped = hostile_mix(sb)
        uids = sb.program_uids()
        first_starts = sb.stats.worker_starts
        reasons = _record_failures(sb)
        cg_parents = {os.path.dirname(d) for h in sb._handles if h is not None and h.cgroup
                      for d in h.cgroup.dirs}
        own_dirs = (sb_isolation._interpreter_info(sb.python)[3], sb_isolation.TMP_MIRROR,
                    sb_isolation.PROC_HOLDER, sb_isolation.WORKER_DIR)
        cycle = sum(SLOW_EVERY // p.every for p in hostile) * (REAL_PER_HOSTILE + 1)
        tally = _Tally()   # mismatches over every phase; verdicts of the mixed phase
        warm_items = schedule(max(cycle, 1) * warmup_cycles, hostile, tests)
        _run_all(sb, warm_items, tally)
        _settle(before | usage(sb).worker_procs)
        gc.collect()
        warm = usage(sb)
        real_s = _run_all(sb, schedule(real_only_executions, hostile, tests, real_only=True), tally)
        tally.verdicts, tally.hostile = collections.Counter(), 0
        trend = [(0, _rss_kib("self"), sb.stats.worker_starts)]
        mixed_s = _run_all(sb, schedule(executions, hostile, tests), tally, trend)
        extra = _settle(before | usage(sb).worker_procs)
        gc.collect()
        end = usage(sb)
        leftover_open = _describe(extra - end.worker_procs)
        uid_procs = _describe({p for p, (_, u) in process_table().items() if u in uids})
        stats = dataclasses.replace(sb.stats)
    finally:
        sb.close()
    leftover_closed = _describe(_settle(before))
    uid_procs += _describe({p for p, (_, u) in process_table().items() if u in uids})
    # the workers mount proc and tmpfs on these (in their own namespaces) and bind into the
    # sandbox's directories: such a mount in ours escaped; other new ones are other processes'
    now = _mounts()
    ours = {m for m in now if any(m[0].startswith(d) for d in own_dirs)} | {
        m for m in now - mounts_before if m[0] in ("/tmp", "/dev/shm", "/proc") or m[1] == "proc"}
    cgroups = [d for parent in cg_parents
               for d in glob.glob(os.path.join(parent, f"cure-sandbox-{os.getpid()}-*"))]
    files = [f for d in ("/tmp", "/dev/shm") for f in glob.glob(f"{d}/*{TAG}*")]
    report = SoakReport(
        executions=executions, hostile_executions=tally.hostile,
        real_only_executions=real_only_executions, warmup_executions=len(warm_items),
        mixed_s=mixed_s, real_only_s=real_s, isolation=sb.isolation, workers=workers,
        skipped=skipped, verdicts=dict(tally.verdicts),
        mismatches={k: dict(v) for k, v in tally.wrong.items()},
        start=start, warm=warm, end=end, worker_restarts=stats.worker_starts - first_starts,
        infra_failures=stats.infra_failures, sandbox_errors=stats.sandbox_errors,
        infra_reasons=dict(reasons), setup_kills=stats.setup_kills, rss_trend=trend,
        leftover_open=leftover_open, leftover_closed=leftover_closed, uid_processes=uid_procs,
        new_mounts=[" ".join(m) for m in sorted(ours)], leftover_cgroups=cgroups,
        other_mounts=[" ".join(m) for m in sorted(now - mounts_before - ours)],
        host_files=files, checks=[])
    report.checks = _checks(report)
    return report


# ------------------------------------------------------------------ CLI
def _table(r: SoakReport) -> str:
    """Before/after table: at the pool's start, after the warm-up, at the end."""
    lines = [f"{'':24}{'start':>10}{'warm':>10}{'end':>10}{'growth':>10}"]
    for name, field in (("orchestrator fds", "orch_fds"), ("orchestrator threads", "orch_threads"),
                        ("orchestrator RSS MiB", "orch_rss_kib"), ("worker fds", "worker_fds"),
                        ("worker threads", "worker_threads"), ("worker RSS MiB", "worker_rss_kib"),
                        ("worker mounts", "worker_mounts"), ("worker processes", "worker_procs")):
        vals = [getattr(u, field) for u in (r.start, r.warm, r.end)]
        a, b, c = [len(v) for v in vals] if field == "worker_procs" else vals
        cells = [f"{v / 1024:10.1f}" if field.endswith("kib") else f"{v:10d}"
                 for v in (a, b, c, c - b)]
        lines.append(f"{name:24}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--executions", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--isolation", default="auto")
    args = ap.parse_args(argv)
    r = soak(args.executions, args.workers, args.isolation)
    print(f"isolation {r.isolation}, {r.workers} workers; warm-up {r.warmup_executions} "
          f"executions; real programs alone: {r.real_only_executions} in {r.real_only_s:.1f} s "
          f"({r.real_rate:.1f}/s); mixed: {r.executions} ({r.hostile_executions} hostile) in "
          f"{r.mixed_s:.1f} s ({r.mixed_rate:.1f}/s)")
    if r.skipped:
        print(f"hostile programs left out (their verdict needs more isolation): {r.skipped}")
    print(_table(r))
    print("verdicts (mixed phase): " + ", ".join(f"{k} {v}" for k, v in sorted(r.verdicts.items()))
          + f"; worker restarts {r.worker_restarts}, failed attempts {r.infra_failures}, "
          f"set-up kills {r.setup_kills}")
    if r.other_mounts:
        print(f"new host mounts of other processes (not checked): {r.other_mounts}")
    for why, k in sorted(r.infra_reasons.items()):
        print(f"  failed attempt x{k}: {why}")
    print("orchestrator RSS along the mixed phase (executions: MiB, workers started so far): "
          + ", ".join(f"{n}: {kib / 1024:.2f} {w}" for n, kib, w in r.rss_trend))
    for c in r.checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
    for name, field, bound in (("soak_rss_growth_mib", "orch_rss_kib", ORCH_RSS_GROWTH_MIB),
                               ("soak_worker_rss_growth_mib", "worker_rss_kib",
                                WORKER_RSS_GROWTH_MIB * r.workers)):   # ours: growth, MiB
        g = r.growth(field) / 1024
        print(f"RESULT {name} ours={g:.2f} baseline={bound:.2f} ratio={g / bound:.3f}")
    for name, field in (("soak_orchestrator_fds", "orch_fds"), ("soak_worker_fds", "worker_fds"),
                        ("soak_orchestrator_threads", "orch_threads"),
                        ("soak_worker_threads", "worker_threads")):
        a, b = getattr(r.end, field), getattr(r.warm, field)
        print(f"RESULT {name} ours={a} baseline={b} ratio={a / b if b else 0.0:.3f}")
    print(f"RESULT soak_executions_per_s ours={r.mixed_rate:.1f} baseline={r.real_rate:.1f} "
          f"ratio={r.mixed_rate / r.real_rate if r.real_rate else 0.0:.3f}")
    failed = [c.name for c in r.checks if not c.ok]
    print(f"FAILED: {', '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
