"""The orchestrator: a pool of pre-started workers and the public ``Sandbox`` API.

The orchestrator never runs untrusted code. It holds the expected outputs, sends each worker only
(program, stdin, limits), compares the returned stdout itself, and turns infrastructure failures
(a worker that died, hung or spoke garbage) into a retry on a fresh worker and, if the retry fails
too, a SANDBOX_ERROR verdict -- never a program verdict.

Threads: one driver thread per worker takes jobs from a shared queue, so ``run``/``run_matrix``
may be called from several threads at once; each call waits for its own jobs only.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import queue
import sys
import threading
import time
from typing import Callable, Sequence

from . import isolation
from .judge import classify
from .procs import tasks_of_uid
from .syscall_filter import filter_hex, warn_unfiltered
from .types import Execution, Limits, MatrixResult, TestCase, Verdict
from .worker_handle import InfraError, IsolationUnavailable, WorkerHandle

__all__ = ["Sandbox", "SandboxStats", "IsolationUnavailable"]

_REPLY_SLACK_S = 10.0
_PIPELINE_BYTES = 16 << 10
_probe_cache: dict[tuple[str, str], tuple[bool, str]] = {}
_probe_lock = threading.Lock()
_cgroup_serial = itertools.count(1)   # process-wide: several Sandboxes may live at once
# Imported by every worker once, so that programs find them loaded: modules that solutions
# commonly import, whose import costs a program more than their memory costs a fork.
DEFAULT_PRELOAD = ("re", "collections", "functools", "heapq", "bisect", "math", "typing")


class _SetupStarved(Exception):
    """The wall-clock kill came before the program started: the execution's set-up was starved
    of CPU (a loaded host). The worker is healthy; the job runs again on it."""


@dataclasses.dataclass
class SandboxStats:
    executions: int = 0
    worker_starts: int = 0
    infra_failures: int = 0      # failed attempts (each retried once)
    setup_kills: int = 0         # executions killed by the clock before the program started
    sandbox_errors: int = 0      # executions reported as SANDBOX_ERROR after the retry


@dataclasses.dataclass
class _Job:
    program: bytes
    stdin: bytes
    expected: str | None
    cpu_limit: float
    keep_output: bool
    done: Callable[[Execution], None]
    attempts: int = 0
    t_sent: int = 0          # perf_counter_ns when sent to a worker (trace mode)


class _Batch:
    """Completion counter for the jobs of one call."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.cond = threading.Condition()

    def finish_one(self) -> None:
        with self.cond:
            self.left -= 1
            if self.left == 0:
                self.cond.notify_all()

    def wait(self) -> None:
        with self.cond:
            while self.left > 0:
                self.cond.wait()


def _encode(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, got {type(text).__name__}")
    return text.encode("utf-8", "surrogatepass")


class Sandbox:
    """A pool of sandbox workers. Use as a context manager, or call ``close()``.

    ``workers``: number of worker processes (default: the number of CPUs).
    ``isolation``: "auto" (the strongest mode available, see ``sandbox.isolation``), or one of
    "namespaces", "userns", "rlimits" (falling back to "rlimits" is never silent: it is logged).
    ``cgroups``: as root, put each worker in its own memory/pids cgroup where the host allows
    it (``memory_cgroups`` says whether it did), bounding the total memory of a program's
    processes and turning OOM kills into MEMORY_LIMIT.
    ``python``: the interpreter programs run under (default: this one, with its venv); it
    needs only its standard library.
    ``preload``: modules each worker imports once for its programs (default
    ``DEFAULT_PRELOAD``); a program's ``import`` of one is then free, but every module makes
    each fork copy a little more memory. Only
    modules whose import starts no thread and draws no randomness (not ``random``: every
    child would inherit one seed).
    ``syscall_filter``: programs run under ``sandbox.syscall_filter``'s seccomp filter (without
    libseccomp: a warning, once); ``syscall_filtered`` says whether it is in force.
    ``trace``: record the timestamps (``time.perf_counter_ns``, one clock for every process)
    of each execution's stages in ``traces`` -- for ``benchmarks/sandbox.py --breakdown``.
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None,
                 isolation: str = "auto", cgroups: bool = True, python: str | None = None,
                 preload: Sequence[str] | None = None, trace: bool = False,
                 syscall_filter: bool = True) -> None:
        self.limits = limits if limits is not None else Limits()
        if not isinstance(self.limits, Limits):
            raise TypeError(f"limits must be a sandbox.Limits, got {type(self.limits).__name__}")
        n = workers if workers is not None else (os.cpu_count() or 1)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.n_workers = n
        self.stats = SandboxStats()
        self._stats_lock = threading.Lock()
        self.preload = list(DEFAULT_PRELOAD if preload is None else preload)
        for name in self.preload:
            if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
                raise ValueError(f"preload: {name!r} is not a module name")
        self.trace = bool(trace)
        self.traces: list[dict[str, int]] = []
        self._python_chosen = python is not None
        self.python = os.path.abspath(python) if python else sys.executable
        if not os.access(self.python, os.X_OK):
            raise ValueError(f"python: {self.python!r} is not an executable interpreter")
        self._check_python()
        self.use_cgroups = bool(cgroups) and os.geteuid() == 0
        self.isolation = self._choose_mode(isolation)
        self._seccomp_hex = filter_hex() if syscall_filter else ""
        self.syscall_filtered = bool(self._seccomp_hex)   # False too if a worker cannot load it
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._handles: list[WorkerHandle | None] = [None] * n
        self._started = threading.Barrier(n + 1)
        for i in range(n):
            t = threading.Thread(target=self._drive, args=(i,), name=f"sandbox-worker-{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        self._started.wait()

    # ------------------------------------------------------------------ set-up
    def _check_python(self) -> None:
        """Ask the interpreter once what the workers need (cached): a clear error here rather
        than workers that cannot start."""
        try:
            isolation.site_packages(self.python)
        except RuntimeError as e:
            raise ValueError(f"python: {e}") from None

    def _worker_config(self, index: int) -> dict:
        cfg: dict = {"namespaces": self.isolation == "namespaces",
                     "nested": self.isolation == "userns",
                     "tmp_bytes": int(self.limits.tmp_mb) << 20,
                     "sys_path": [isolation.program_path(d) if self.isolation != "rlimits" else d
                                  for d in isolation.site_packages(self.python)],
                     "preload": self.preload, "proc_batch": isolation.PROC_BATCH,
                     "seccomp": self._seccomp_hex}
        if os.geteuid() == 0:
            # A distinct unprivileged uid per worker (and per orchestrator process), so that
            # RLIMIT_NPROC counts only that worker's program and no two programs share a uid.
            cfg["uid"] = 200000 + (os.getpid() % 20000) * 64 + index % 64
        else:
            # programs keep our uid: their process limit comes on top of what it already runs
            cfg["nproc_base"] = tasks_of_uid(os.getuid()) + 64
        return cfg

    def _max_blob(self) -> int:
        return max(self.limits.output_bytes + 1, 1 << 16)

    def _probe(self, mode: str) -> tuple[bool, str]:
        with _probe_lock:
            key = (mode, self.python)
            if key in _probe_cache:
                return _probe_cache[key]
            try:
                h = WorkerHandle(mode, {"namespaces": mode == "namespaces"}, 1 << 16,
                                  python=self.python)
                ok = mode != "namespaces" or bool(h.hello.get("namespaces"))
                detail = "" if ok else f"per-execution namespaces failed: {h.hello.get('ns_error')}"
                h.close()
            except IsolationUnavailable:
                raise
            except (InfraError, OSError, RuntimeError) as e:
                ok, detail = False, str(e)
            _probe_cache[key] = (ok, detail)
            return ok, detail

    def _choose_mode(self, requested: str) -> str:
        if requested not in ("auto",) + isolation.MODES:
            raise ValueError(f"isolation must be 'auto' or one of {isolation.MODES}, "
                             f"got {requested!r}")
        if requested == "userns" and os.geteuid() == 0:
            raise ValueError("isolation 'userns' is for non-root callers (as root, the mapped "
                             "uid would be root outside); use 'namespaces' or 'auto'")
        mode = isolation.default_mode() if requested == "auto" else requested
        reasons = []
        while True:
            try:
                ok, detail = self._probe(mode)
            except IsolationUnavailable as e:
                system = _system_python()
                if self._python_chosen or system is None or system == self.python:
                    raise IsolationUnavailable("; ".join(reasons + [str(e)])) from None
                # e.g. root, no usable bubblewrap, our interpreter under /root (0700): run the
                # programs under the system interpreter rather than as root or not at all
                reasons.append(f"{e}; programs run under the system interpreter {system}")
                self.python = system
                continue
            if ok or mode == "rlimits":
                break
            reasons.append(f"{mode} unavailable: {detail[:300]}")
            mode = "rlimits"
        if mode == "rlimits" and isolation.bwrap_path() is None:
            reasons.append("bubblewrap (bwrap) not installed")
        isolation.announce(mode, "; ".join(reasons))
        return mode

    def _cgroup_spec(self, index: int) -> tuple[str, int, int]:
        """(name, memory bytes, task limit) of a worker's cgroup: one program's memory limit
        plus its private tmpfs, its captured output and stdin, and the worker itself."""
        lim = self.limits
        mb = lim.memory_mb + 2 * lim.tmp_mb + 2 * lim.output_mb + lim.input_mb + 64
        name = f"cure-sandbox-{os.getpid()}-{index}-{next(_cgroup_serial)}"   # unique here
        return name, int(mb * (1 << 20)), int(lim.processes) + 8

    def _start_worker(self, index: int) -> WorkerHandle:
        h = WorkerHandle(self.isolation, self._worker_config(index), self._max_blob(),
                          self._cgroup_spec(index) if self.use_cgroups else None, self.python)
        if self._seccomp_hex and not h.hello.get("seccomp"):
            self.syscall_filtered = False
            warn_unfiltered(f"a worker could not load it: {h.hello.get('seccomp_error')}")
        with self._stats_lock:
            self.stats.worker_starts += 1
        return h

    # ------------------------------------------------------------------ driver threads
    def _drive(self, index: int) -> None:
        """Driver of worker ``index``: keeps up to two requests in flight (the second only when
        it fits the pipe buffer, so neither side can block on a full pipe), so the worker starts
        the next execution while this thread judges the previous one."""
        try:
            self._handles[index] = self._start_worker(index)
        except Exception:
            self._handles[index] = None   # started lazily by the first job (and retried)
        self._started.wait()
        inflight: collections.deque[_Job] = collections.deque()
        pending: collections.deque[_Job] = collections.deque()   # retries and held-back jobs
        stopping = False
        while True:
            try:
                while len(inflight) < 2:
                    if pending:
                        job = pending.popleft()
                    elif stopping:
                        break
                    elif inflight:
                        try:
                            job = self._queue.get_nowait()
                        except queue.Empty:
                            break
                    else:
                        job = self._queue.get()
                    if job is None:
                        stopping = True
                        break
                    if inflight and len(job.program) + len(job.stdin) > _PIPELINE_BYTES:
                        pending.appendleft(job)
                        break
                    inflight.append(job)
                    self._send(index, job)
                if not inflight:
                    if stopping and not pending:
                        break
                    continue
                job = inflight[0]
                ex = self._receive(index, job)
                inflight.popleft()
                job.done(ex)
            except _SetupStarved:
                self._setup_retry(inflight, pending)
            except InfraError as e:
                self._infra_failure(index, inflight, pending, str(e))
            except Exception as e:  # a bug here must not hang callers
                for job in inflight:
                    job.done(_sandbox_error(f"internal error: {type(e).__name__}: {e}"))
                inflight.clear()
        h = self._handles[index]
        if h is not None:
            h.close()
            self._handles[index] = None

    def _setup_retry(self, inflight: collections.deque, pending: collections.deque) -> None:
        """The head job goes again on the same worker (once; then SANDBOX_ERROR); the jobs sent
        behind it stay in flight."""
        head = inflight.popleft()
        head.attempts += 1
        failed = head.attempts >= 2
        with self._stats_lock:
            self.stats.setup_kills += 1
            self.stats.sandbox_errors += failed
        if failed:
            head.done(_sandbox_error("the execution's set-up was killed by the wall clock twice "
                                     "(host overloaded)"))
        else:
            pending.appendleft(head)

    def _infra_failure(self, index: int, inflight: collections.deque, pending: collections.deque,
                       failure: str) -> None:
        """Restart the worker; the job at the head is retried once (then SANDBOX_ERROR), the
        job sent behind it is simply sent again."""
        with self._stats_lock:
            self.stats.infra_failures += 1
        h = self._handles[index]
        if h is not None:
            h.kill()
            self._handles[index] = None
        jobs = list(inflight)
        inflight.clear()
        if not jobs:
            return
        head = jobs[0]
        head.attempts += 1
        if head.attempts >= 2:
            with self._stats_lock:
                self.stats.sandbox_errors += 1
            head.done(_sandbox_error(failure))
            jobs = jobs[1:]
        for job in reversed(jobs):
            pending.appendleft(job)

    def _meta(self, job: _Job) -> dict:
        lim = self.limits
        meta = {"op": "run", "cpu_s": job.cpu_limit, "wall_s": job.cpu_limit * lim.wall_factor,
                "mem_bytes": int(lim.memory_mb) << 20, "out_bytes": lim.output_bytes,
                "nproc": int(lim.processes), "nofile": int(lim.open_files),
                "tmp_bytes": int(lim.tmp_mb) << 20}
        if self.trace:
            meta["trace"] = True
            job.t_sent = time.perf_counter_ns()
        return meta

    def _send(self, index: int, job: _Job) -> None:
        h = self._handles[index]
        if h is None or h.proc.poll() is not None:
            if h is not None:
                h.kill()
            self._handles[index] = None
            h = self._handles[index] = self._start_worker(index)
        h.send(self._meta(job), job.program, job.stdin)

    def _receive(self, index: int, job: _Job) -> Execution:
        lim = self.limits
        h = self._handles[index]
        if h is None:
            raise InfraError("worker gone")
        reply, out, err = h.receive(job.cpu_limit * lim.wall_factor + _REPLY_SLACK_S)
        t_received = time.perf_counter_ns() if self.trace else 0
        oom = h.cgroup is not None and h.cgroup.oom_since_last()
        if not reply.get("stage"):
            if reply.get("timed_out"):
                raise _SetupStarved()
            raise InfraError(f"execution set-up failed in the worker (exit "
                              f"{reply.get('exit_code')}, signal {reply.get('signal')}): "
                              f"{err.decode('utf-8', 'replace')[-300:]}")
        if len(out) > lim.output_bytes or len(err) > 1 << 16:
            raise InfraError("worker reply over its caps")
        with self._stats_lock:
            self.stats.executions += 1
        stdout = out.decode("utf-8", "replace")
        stderr_tail = err.decode("utf-8", "replace")
        verdict, detail = classify(reply, stdout, stderr_tail, job.expected, job.cpu_limit,
                                   lim.float_tol, oom=oom)
        if self.trace and isinstance(reply.get("trace"), dict):
            self.traces.append(dict(reply["trace"], t_sent=job.t_sent, t_received=t_received,
                                    t_judged=time.perf_counter_ns(), worker=index))
        return Execution(verdict=verdict, stdout=stdout if job.keep_output else "",
                         stderr_tail=stderr_tail, exit_code=reply.get("exit_code"),
                         signal=reply.get("signal"), wall_s=float(reply["wall_s"]),
                         cpu_s=float(reply["cpu_s"]), detail=detail)

    # ------------------------------------------------------------------ public API
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Sandbox is closed")

    def _stdin_bytes(self, text: str, what: str) -> bytes:
        data = _encode(text, what)
        if len(data) > self.limits.input_bytes:
            raise ValueError(f"{what} is {len(data)} bytes, over Limits.input_mb="
                             f"{self.limits.input_mb}")
        return data

    def run(self, program: str, stdin: str = "", time_limit_s: float | None = None,
            expected: str | None = None) -> Execution:
        """Run one program on one stdin; with ``expected``, the verdict includes the comparison."""
        self._check_open()
        job_prog = _encode(program, "program")
        job_in = self._stdin_bytes(stdin, "stdin")
        cpu = self.limits.cpu_limit(time_limit_s)
        box: list[Execution] = []
        batch = _Batch(1)

        def done(ex: Execution) -> None:
            box.append(ex)
            batch.finish_one()

        self._queue.put(_Job(job_prog, job_in, expected, cpu, True, done))
        batch.wait()
        return box[0]

    def run_matrix(self, programs: Sequence[str], tests: Sequence[TestCase],
                   time_limit_s: float | None = None) -> MatrixResult:
        """Every program on every test: verdicts [len(programs), len(tests)]."""
        return self.run_matrices([(programs, tests, time_limit_s)])[0]

    def run_matrices(self, groups: Sequence[tuple[Sequence[str], Sequence[TestCase], float | None]]
                     ) -> list[MatrixResult]:
        """Several problems at once, each its own programs x its own tests, scheduled together
        over the pool (each program and each test input is encoded once, not per pair)."""
        self._check_open()
        jobs: list[_Job] = []
        results: list[MatrixResult] = []
        batch_jobs: list[tuple[MatrixResult, int, int, bytes, bytes, str, float]] = []
        for g, group in enumerate(groups):
            try:
                programs, tests, tl = group
            except (TypeError, ValueError):
                raise ValueError(f"group {g}: expected (programs, tests, time_limit_s), "
                                 f"got {type(group).__name__}") from None
            for j, t in enumerate(tests):
                if not isinstance(t, TestCase):
                    raise TypeError(f"group {g} test {j}: expected TestCase, got "
                                    f"{type(t).__name__}")
            cpu = self.limits.cpu_limit(tl)
            res = MatrixResult.empty(len(programs), len(tests))
            results.append(res)
            progs = [_encode(p, f"group {g} program {i}") for i, p in enumerate(programs)]
            ins = [self._stdin_bytes(t.input, f"group {g} test {j} input")
                   for j, t in enumerate(tests)]
            for i, pb in enumerate(progs):
                for j, ib in enumerate(ins):
                    batch_jobs.append((res, i, j, pb, ib, tests[j].output, cpu))
        batch = _Batch(len(batch_jobs))
        for res, i, j, pb, ib, expected, cpu in batch_jobs:
            def done(ex: Execution, res=res, i=i, j=j) -> None:
                res.verdicts[i, j] = ex.verdict
                res.wall_s[i, j] = ex.wall_s
                res.cpu_s[i, j] = ex.cpu_s
                batch.finish_one()
            jobs.append(_Job(pb, ib, expected, cpu, False, done))
        for job in jobs:
            self._queue.put(job)
        if jobs:
            batch.wait()
        return results

    def close(self) -> None:
        """Stop the driver threads and the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=30)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def program_uids(self) -> set[int]:
        """Uids the programs of this pool run as (empty when they keep the caller's uid)."""
        return {h.hello["uid"] for h in self._handles
                if h is not None and h.hello.get("uid") != os.getuid()}

    @property
    def memory_cgroups(self) -> bool:
        """Whether the live workers run in their own memory cgroups."""
        live = [h for h in self._handles if h is not None]
        return bool(live) and all(h.cgroup is not None for h in live)

    def worker_pids(self) -> list[int]:
        """Host pids of the live worker processes (bwrap or python)."""
        return [h.proc.pid for h in self._handles if h is not None and h.proc.poll() is None]


def _system_python() -> str | None:
    """The distribution's python3, if there is one (the fallback interpreter for programs)."""
    for path in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(path, os.X_OK):
            return path
    return None


def _sandbox_error(detail: str) -> Execution:
    return Execution(verdict=Verdict.SANDBOX_ERROR, stdout="", stderr_tail="", exit_code=None,
                     signal=None, wall_s=0.0, cpu_s=0.0, detail=detail)
