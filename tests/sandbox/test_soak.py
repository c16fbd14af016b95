"""The sandbox soak of ``benchmarks/sandbox_soak.py``, shortened: about two thousand executions
of real and hostile programs through one pool (warm-up, real programs alone, then 800 mixed),
then each of its checks asserted on the measured values against the soak's stated bounds:
verdicts, worker failures and restarts, growth of fds, threads, resident memory and mount tables
of the orchestrator and of the workers, and leftover processes, mounts, cgroups and files.

Why: the adversarial suite runs each hostile program a few times; a leak of one fd, thread or
mount per execution, or a process that outlives one in a hundred runs, only shows over many.
"""
from __future__ import annotations

import pytest

from benchmarks import sandbox_soak as soak_mod
from sandbox import IsolationUnavailable

pytestmark = pytest.mark.timeout(300)

EXECUTIONS = 800


def _growth(r: soak_mod.SoakReport, field: str) -> str:
    return (f"{field}: {getattr(r.warm, field)} after the warm-up, "
            f"{getattr(r.end, field)} at the end")


@pytest.mark.slow
def test_soak() -> None:
    try:
        r = soak_mod.soak(EXECUTIONS, workers=2, real_only_executions=200, warmup_cycles=1)
    except IsolationUnavailable as e:
        pytest.skip(f"no sandbox isolation on this host: {e}")
    # the mix really ran, and the measurements saw the workers
    assert sum(r.verdicts.values()) == EXECUTIONS, r.verdicts
    assert r.hostile_executions >= EXECUTIONS // (soak_mod.REAL_PER_HOSTILE + 1), r
    kinds = {"OK", "WRONG_ANSWER", "RUNTIME_ERROR", "COMPILE_ERROR", "TIME_LIMIT",
             "MEMORY_LIMIT", "OUTPUT_LIMIT"}
    assert kinds <= set(r.verdicts), f"verdicts the mix should produce are missing: {r.verdicts}"
    assert r.warm.worker_procs and r.warm.worker_fds > 0 and r.warm.worker_rss_kib > 0, r.warm

    # verdicts: every program got its own, hostile or not, in every phase
    assert not r.mismatches, f"programs with unexpected verdicts {{name: {{got: count}}}}: " \
                             f"{r.mismatches}"
    assert r.sandbox_errors == 0, f"{r.sandbox_errors} SANDBOX_ERROR verdicts: {r.infra_reasons}"
    assert r.infra_failures == 0, f"{r.infra_failures} failed attempts: {r.infra_reasons}"
    assert r.worker_restarts <= soak_mod.MAX_WORKER_RESTARTS, \
        f"{r.worker_restarts} workers restarted: {r.infra_reasons}"

    # no growth between the warm-up and the end
    assert r.growth("orch_fds") <= soak_mod.ORCH_FD_GROWTH, _growth(r, "orch_fds")
    assert r.growth("orch_threads") <= soak_mod.ORCH_THREAD_GROWTH, _growth(r, "orch_threads")
    assert r.growth("worker_fds") <= soak_mod.WORKER_FD_GROWTH, _growth(r, "worker_fds")
    assert r.growth("worker_threads") <= soak_mod.WORKER_THREAD_GROWTH, \
        _growth(r, "worker_threads")
    assert r.growth("worker_mounts") <= soak_mod.WORKER_MOUNT_GROWTH * r.workers, \
        _growth(r, "worker_mounts")
    assert r.growth("orch_rss_kib") <= soak_mod.ORCH_RSS_GROWTH_MIB * 1024, \
        f"{_growth(r, 'orch_rss_kib')} (KiB; along the mixed phase: {r.rss_trend})"
    assert r.growth("worker_rss_kib") <= soak_mod.WORKER_RSS_GROWTH_MIB * 1024 * r.workers, \
        _growth(r, "worker_rss_kib")

    # nothing left behind
    assert not r.leftover_open, f"processes below us besides the workers: {r.leftover_open}"
    assert not r.leftover_closed, f"processes below us after close: {r.leftover_closed}"
    assert not r.uid_processes, f"processes running as a program uid: {r.uid_processes}"
    assert not r.new_mounts, f"mounts left on the host: {r.new_mounts}"
    assert not r.leftover_cgroups, f"cgroups left after close: {r.leftover_cgroups}"
    assert not r.host_files, f"program files in the host's /tmp or /dev/shm: {r.host_files}"
    # and the soak's own verdict on itself agrees
    assert [c for c in r.checks if not c.ok] == [], [c for c in r.checks if not c.ok]
