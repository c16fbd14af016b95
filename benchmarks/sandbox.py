"""Executions per second of the sandbox vs a fresh subprocess per execution and vs the
reference's pattern (a multiprocessing.Process per execution running exec() with redirected
stdio, no isolation), on the same programs and tests, in one run.

Workloads: "trivial" (read a number, print it plus one) and "mix" (a few ms of CPU each; some
wrong, some crashing, some timing out). Every method runs with the same parallelism (one worker
or thread per CPU) and the same time limit; baselines use the real interpreter (not a venv shim).

    python benchmarks/sandbox.py [--trivial N] [--mix-programs P] [--mix-tests T] [--breakdown]
                                 [--filter-cost]

``--breakdown`` also prints where the time of one execution goes (one worker, empty program,
median ms per stage, from the timestamps a ``Sandbox(trace=True)`` records). ``--filter-cost``
also measures the sandbox with and without its seccomp filter (``sandbox.syscall_filter``), the
two alternating in rounds on the same workloads.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import multiprocessing as mp
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sandbox import Limits, Sandbox, TestCase, outputs_match  # noqa: E402

PYTHON = os.path.realpath(sys.executable)
TRIVIAL = "print(int(input()) + 1)\n"
MIX = {
    "sort_ok": "n = int(input())\nxs = sorted((i * 7919) % 10007 for i in range(n))\n"
               "print(sum(xs[::3]) % 1000003)\n",
    "sort_wrong": "n = int(input())\nxs = sorted((i * 7919) % 10007 for i in range(n))\n"
                  "print(sum(xs[::3]) % 1000003 + 1)\n",
    "dp_ok": "n = int(input())\nf = [0] * (n + 1)\nf[1] = 1\nfor i in range(2, n + 1):\n"
             "    f[i] = (f[i - 1] + f[i - 2]) % 1000000007\nprint(f[n])\n",
    "crash": "n = int(input())\nxs = list(range(n))\nprint(xs[n])\n",
    "timeout": "n = int(input())\nwhile True:\n    n += 1\n",
}


def mix_expected(name: str, n: int) -> str:
    if name.startswith("sort"):
        xs = sorted((i * 7919) % 10007 for i in range(n))
        return str(sum(xs[::3]) % 1000003)
    f = [0] * (n + 1)
    f[1] = 1
    for i in range(2, n + 1):
        f[i] = (f[i - 1] + f[i - 2]) % 1000000007
    return str(f[n])


def workloads(n_trivial: int, n_mix_programs: int, n_mix_tests: int):
    trivial = ([TRIVIAL] * 10, [TestCase(str(i), str(i + 1)) for i in range(n_trivial // 10)], None)
    names = (["sort_ok", "dp_ok", "sort_wrong", "crash", "sort_ok", "dp_ok", "sort_ok",
              "dp_ok", "crash", "timeout"] * n_mix_programs)[:n_mix_programs]
    sizes = [20000 + 1000 * j for j in range(n_mix_tests)]
    mix_tests = {name: [TestCase(str(n), mix_expected("sort" if name != "dp_ok" else "dp", n))
                        for n in sizes] for name in set(names)}
    # one group per program, so that every program has the tests of its own kind
    mix = [([MIX[name]], mix_tests[name], None) for name in names]
    return trivial, mix


# ---------------------------------------------------------------------- baseline (a)
def run_subprocess(program_path: str, stdin: str, expected: str, timeout: float) -> bool:
    import subprocess
    try:
        r = subprocess.run([PYTHON, program_path], input=stdin, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and outputs_match(r.stdout, expected)


# ---------------------------------------------------------------------- baseline (b)
def _reference_child(source: str, stdin: str, conn) -> None:
    sys.stdin = io.StringIO(stdin)
    out = io.StringIO()
    sys.stdout = out
    try:
        exec(compile(source, "<program>", "exec"), {"__name__": "__main__"})
        conn.send((True, out.getvalue()))
    except BaseException:
        conn.send((False, out.getvalue()))


def run_reference(source: str, stdin: str, expected: str, timeout: float) -> bool:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_reference_child, args=(source, stdin, child))
    p.start()
    child.close()
    ok = False
    if parent.poll(timeout):
        try:
            finished, out = parent.recv()
            ok = finished and outputs_match(out, expected)
        except EOFError:
            pass
    p.join(0.01)
    if p.is_alive():
        p.kill()
        p.join()
    parent.close()
    return ok


def run_baseline(kind: str, groups, threads: int, timeout: float, tmp: str
                 ) -> tuple[float, int, int]:
    """(seconds, executions, passes) of a baseline over (programs, tests, _) groups."""
    jobs = []
    for programs, tests, _ in groups:
        for prog in programs:
            path = os.path.join(tmp, f"p{abs(hash(prog))}.py")
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(prog)
            for t in tests:
                jobs.append((path, prog, t.input, t.output))
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as pool:
        if kind == "subprocess":
            futs = [pool.submit(run_subprocess, path, i, o, timeout) for path, _, i, o in jobs]
        else:
            futs = [pool.submit(run_reference, prog, i, o, timeout) for _, prog, i, o in jobs]
        passes = sum(f.result() for f in futs)
    return time.perf_counter() - t0, len(jobs), passes


def run_ours(sb: Sandbox, groups) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    results = sb.run_matrices(groups)
    dt = time.perf_counter() - t0
    n = sum(r.verdicts.size for r in results)
    return dt, n, int(sum(r.passed.sum() for r in results))


# (label, start stamp, end stamp) on one clock (perf_counter_ns) across all processes
STAGES = [
    ("worker: request, stdin, new PID namespace", "t_req", "t_fork"),
    ("worker: fork() returns", "t_fork", "t_forked"),
    ("child: fork() until it runs", "t_fork", "t_child"),
    ("child: setsid, IPC namespace, mount /proc", "t_child", "t_ns"),
    ("child: oom_score_adj, stdio fds, close the rest", "t_ns", "t_fds"),
    ("child: rlimits", "t_fds", "t_limits"),
    ("child: drop uid, no_new_privs, seccomp", "t_limits", "t_setup"),
    ("child: program's stdio and module", "t_setup", "t_ready"),
    ("child: program + exit, until the worker sees it", "t_ready", "t_exited"),
    ("worker: reap, read output, reply ready", "t_exited", "t_reply"),
    ("reply: pipe + decode in the orchestrator", "t_reply", "t_received"),
    ("orchestrator: judge, store the result", "t_received", "t_judged"),
]


def breakdown(limits: Limits, n: int, preload: list[str] | None) -> None:
    """Median ms per stage of an empty program on one worker."""
    with Sandbox(workers=1, limits=limits, trace=True, preload=preload) as one:
        run_ours(one, [(["pass"], [TestCase("", "")] * 50, None)])   # warm-up
        one.traces.clear()
        dt, k, _ = run_ours(one, [(["pass"], [TestCase("", "")] * n, None)])
        traces = sorted(one.traces, key=lambda t: t["t_req"])

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else float("nan")

    print(f"breakdown, 1 worker, empty program ({k} executions, {1000 * dt / k:.2f} ms each "
          f"with tracing on), median ms:")
    for label, a, b in STAGES:
        print(f"  {label:52s} {median([(t[b] - t[a]) / 1e6 for t in traces]):7.3f}")
    print(f"  {'worker: after the reply (unmount /proc, check /tmp)':52s} "
          f"{median([t['cleanup_ns'] / 1e6 for t in traces[1:]]):7.3f}")
    print(f"  {'worker: one request to the next (its cycle)':52s} "
          f"{median([(b['t_req'] - a['t_req']) / 1e6 for a, b in zip(traces, traces[1:])]):7.3f}")


def filter_cost(limits: Limits, preload: list[str] | None, workers: int, trivial, mix,
                rounds: int) -> None:
    """Executions per second with the syscall filter (ours) and without it (baseline)."""
    with Sandbox(workers=workers, limits=limits, preload=preload) as on, \
            Sandbox(workers=workers, limits=limits, preload=preload, syscall_filter=False) as off:
        if not on.syscall_filtered:
            print("filter cost: no syscall filter on this machine (libseccomp missing)")
            return
        for sb in (on, off):
            run_ours(sb, [trivial])   # warm-up
        for wl, groups in (("trivial", [trivial]), ("mix", mix)):
            tot = {True: [0.0, 0], False: [0.0, 0]}
            for r, part in enumerate(chunks(groups, rounds, wl == "trivial")):
                for sb in ((on, off) if r % 2 == 0 else (off, on)):
                    dt, n, _ = run_ours(sb, part)
                    tot[sb is on][0] += dt
                    tot[sb is on][1] += n
            f, u = (tot[k][1] / tot[k][0] for k in (True, False))
            name = "sandbox_seccomp" + ("_mix" if wl == "mix" else "")
            print(f"RESULT {name} ours={f:.1f} baseline={u:.1f} ratio={f / u:.3f} "
                  f"(exec/s with / without the syscall filter)")


def chunks(groups, rounds: int, split_tests: bool):
    """Split a workload into ``rounds`` slices (by tests or by groups)."""
    if split_tests:
        (programs, tests, tl), = groups
        size = -(-len(tests) // rounds)
        return [[(programs, tests[k:k + size], tl)] for k in range(0, len(tests), size)]
    size = -(-len(groups) // rounds)
    return [groups[k:k + size] for k in range(0, len(groups), size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trivial", type=int, default=600, help="trivial executions per method")
    ap.add_argument("--mix-programs", type=int, default=20)
    ap.add_argument("--mix-tests", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=0.25, help="CPU seconds per execution")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=6, help="alternations of the methods")
    ap.add_argument("--breakdown", action="store_true",
                    help="also print the per-stage time of one execution")
    ap.add_argument("--filter-cost", action="store_true",
                    help="also compare the sandbox with and without its syscall filter")
    ap.add_argument("--preload", default=None,
                    help="comma-separated modules the workers preload ('' for none; default: "
                         "the Sandbox default)")
    args = ap.parse_args()
    preload = None if args.preload is None else [m for m in args.preload.split(",") if m]
    trivial, mix = workloads(args.trivial, args.mix_programs, args.mix_tests)
    tl = args.time_limit
    limits = Limits(time_s=tl, wall_factor=2.0)
    wall_timeout = tl * limits.wall_factor   # the baselines get the same wall-clock budget
    print(f"machine: {os.cpu_count()} CPUs, {args.workers} workers/threads per method; "
          f"interpreter {PYTHON}")

    with Sandbox(workers=1, limits=limits, preload=preload) as one:
        run_ours(one, [(["pass"], [TestCase("", "")] * 100, None)])   # warm-up
        dt, n, _ = run_ours(one, [(["pass"], [TestCase("", "")] * 400, None)])
        rate1 = n / dt
    print(f"ours, 1 worker, empty program: {rate1:.0f} exec/s = {1000 / rate1:.2f} ms per "
          f"execution (the whole per-execution overhead)")
    if args.breakdown:
        breakdown(limits, 400, preload)

    # The methods alternate in rounds over slices of each workload (in a rotating order), so
    # that a change of machine load during the run affects all of them alike.
    rows = {(wl, k): [0.0, 0, 0] for wl in ("trivial", "mix")
            for k in ("ours", "subprocess", "reference")}
    with tempfile.TemporaryDirectory(prefix="sbx-bench-") as tmp, \
            Sandbox(workers=args.workers, limits=limits, preload=preload) as sb:
        print(f"isolation: {sb.isolation}, memory cgroups: {sb.memory_cgroups}")
        run_ours(sb, [trivial])   # warm-up
        for wl, groups in (("trivial", [trivial]), ("mix", mix)):
            for r, part in enumerate(chunks(groups, args.rounds, wl == "trivial")):
                kinds = ["ours", "subprocess", "reference"]
                for kind in kinds[r % 3:] + kinds[:r % 3]:
                    if kind == "ours":
                        got = run_ours(sb, part)
                    else:
                        got = run_baseline(kind, part, args.workers, wall_timeout, tmp)
                    for i in range(3):
                        rows[(wl, kind)][i] += got[i]
    rows = {key: (n / dt, n, passes) for key, (dt, n, passes) in rows.items()}
    if args.filter_cost:
        filter_cost(limits, preload, args.workers, trivial, mix, args.rounds)
    for wl in ("trivial", "mix"):
        for kind in ("ours", "subprocess", "reference"):
            rate, n, passes = rows[(wl, kind)]
            print(f"{wl:8s} {kind:11s} {rate:8.1f} exec/s  ({n} executions, {passes} passed)")
    o, a, b = (rows[("trivial", k)][0] for k in ("ours", "subprocess", "reference"))
    mo, ma, mb = (rows[("mix", k)][0] for k in ("ours", "subprocess", "reference"))
    print(f"RESULT sandbox_mix ours={mo:.1f} baseline={ma:.1f} ratio={mo / ma:.2f}")
    print(f"RESULT sandbox_mix_vs_reference ours={mo:.1f} baseline={mb:.1f} ratio={mo / mb:.2f}")
    print(f"RESULT sandbox ours={o:.1f} baseline={a:.1f} ratio={o / a:.2f}")
    print(f"RESULT sandbox_vs_reference ours={o:.1f} baseline={b:.1f} ratio={o / b:.2f}")


if __name__ == "__main__":
    main()
