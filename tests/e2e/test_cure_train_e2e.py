"""cure-train end to end on configs/tiny.py: real rollout server, real sandbox, real JAX learner,
Orbax checkpoints and TensorBoard event files read back. The bit-exact sync run samples with the
vLLM CPU build; the tests of the plumbing around it (kill, freeze, resume) with the hf engine,
which starts faster.

Each test launches ``python -m cure_jax.train_main`` as a subprocess (as a user would), with one
JAX CPU device. Runs: sync 3 steps (evaluated at step 2), and the same run resumed from its
step-2 checkpoint for the 3rd step, bit for bit equal; async killed (SIGKILL) after its first
checkpoint then resumed; the rollout server killed mid-run (the driver must fail fast and leave
nothing behind), and frozen mid-run (restarted when configured).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from rollout.contract.procs import descendants
from rollout.plot_run import read_scalars
from tests.helpers.cure_runs import ROOT, cure_train, tiny_config, train_env
from tests.helpers.shm_peers import segments_of, wait_dead

# fewer samples per step (the hf backend is slower; some tests need only the plumbing)
SMALL = ("--config.rollout.problems_per_step=2", "--config.rollout.k_code=4",
         "--config.rollout.k_case=4")
SMALL_ROWS = 2 * (4 + 4)  # experience rows of a SMALL step


def _start(workdir, *flags) -> subprocess.Popen:
    return subprocess.Popen(cure_train(workdir, *flags), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=train_env(), cwd=str(ROOT))


def _read_until(proc: subprocess.Popen, needle: str, lines: list[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not printed; output so far: {''.join(lines)[-2000:]}; "
                         f"stderr: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")


def _server_pid(line: str) -> int:
    return int(line.split("rollout server pid ")[1].split()[0])



CURE_TAGS = ("cure/code_accuracy", "cure/code_parse_rate", "cure/test_parse_rate",
             "reward/code_mean", "batch/rows", "batch/rows_with_signal", "length/code_mean",
             "time/generate_s", "time/sandbox_s", "time/rewards_s", "time/learn_s",
             "time/sync_s", "loss/pg", "loss/kl", "policy/version")


@pytest.mark.slow
def test_async_killed_then_resumed(tmp_path):
    wd = tmp_path / "async"
    flags = ("--config.train.steps=2", "--config.rollout.mode=async", "--config.rollout.engine=hf",
             *SMALL, "--config.train.checkpoint_every=1", "--config.train.eval_every=0")
    proc = _start(wd, *flags)
    lines: list[str] = []
    try:
        server = _server_pid(_read_until(proc, "rollout server pid", lines, 300))
        _read_until(proc, "step 1/2", lines, 300)
        deadline = time.monotonic() + 60
        while not (wd / "checkpoints" / "1").is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # let the (async) checkpoint finish
        tree = [server] + descendants(server)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The driver was SIGKILLed: its server dies with it and its janitor unlinks the segments.
    assert wait_dead(tree, 10.0) == []
    deadline = time.monotonic() + 10
    while segments_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert segments_of(proc.pid) == []

    done = subprocess.run(cure_train(wd, *flags), capture_output=True, text=True, env=train_env(),
                          cwd=str(ROOT), timeout=480, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from checkpoint step" in done.stdout, done.stdout
    assert "step 2/2" in done.stdout and "step 1/2" not in done.stdout
    sc = read_scalars(wd)
    versions = dict(sc["policy/version"])
    assert versions[1] == 2.0  # two updates in all, across the kill
    assert all(0 <= v <= 1 for _, v in sc["policy/staleness"])  # bounded staleness


def _restore(workdir, step: int):
    from cure_jax import checkpoint as ckpt_lib
    from cure_jax.config import load_config
    from cure_jax.train import build_learner

    learner = build_learner(load_config(tiny_config()))
    ck = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints")
    try:
        return ck.restore(step, learner.abstract_state())
    finally:
        ck.close()


def _check_sync_run(wd: pathlib.Path, out: str) -> None:
    """A sync run of 3 steps (evaluated every 2, checkpointed every step): its console, CURE
    metrics and checkpoints that restore."""
    assert "step 1/3 v1" in out and "step 3/3 v3" in out, out
    sc = read_scalars(wd)
    missing = [t for t in CURE_TAGS if t not in sc]
    assert not missing, f"missing tags {missing}; have {sorted(sc)}"
    assert [s for s, _ in sc["policy/version"]] == [0, 1, 2]
    assert [v for _, v in sc["policy/version"]] == [1.0, 2.0, 3.0]
    assert all(v == SMALL_ROWS for _, v in sc["batch/rows"])
    assert 0.0 <= sc["cure/code_parse_rate"][0][1] <= 1.0
    assert [s for s, _ in sc["eval/code_accuracy"]] == [0, 2]  # the start point, then every 2
    assert "eval/bon_4x4" in sc
    assert all(v > 0 for _, v in sc["time/generate_s"])
    # Checkpoints restore into the learner's state; the driver state has cursor and version.
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2, 3]
    (state1, drv1), (state2, drv2) = _restore(wd, 1), _restore(wd, 2)
    assert (drv1["cursor"], drv1["version"], drv2["cursor"], drv2["version"]) == (1, 1, 2, 2)
    assert drv2["source"] == "cure" and drv2["mode"] == "sync"
    assert int(state2.step) > int(state1.step) > 0


@pytest.mark.slow
def test_sync_run_then_resume_is_bitwise_exact(tmp_path):
    """3 steps in one go (evaluated at step 2, checked as a sync run) == the same run resumed
    from its step-2 checkpoint for the 3rd step without the evaluation: same rollouts (seeded
    sampling, same problems), same parameters and optimizer state, bit for bit; so a resume
    and the evaluation in between change nothing the run carries on with."""
    import jax

    flags = ("--config.train.checkpoint_every=1", "--config.train.steps=3", *SMALL)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    proc = _start(whole, *flags, "--config.train.eval_every=2", "--config.eval.max_problems=8",
                  "--config.train.keep_checkpoints=3")
    out, err = proc.communicate(timeout=480)
    assert proc.returncode == 0, err[-3000:]
    assert segments_of(proc.pid) == []
    _check_sync_run(whole, out)
    # The run as if stopped after step 2: its files without step 3's checkpoint and events.
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "tb")
    shutil.rmtree(resumed / "checkpoints" / "3")
    proc = _start(resumed, *flags, "--config.train.eval_every=0")
    out, err = proc.communicate(timeout=480)
    assert proc.returncode == 0, err[-3000:]
    assert segments_of(proc.pid) == []
    assert "resumed from checkpoint step 2" in out and "step 3/3 v3" in out, out
    a, b = read_scalars(whole), read_scalars(resumed)
    assert [s for s, _ in b["loss/pg"]] == [2]  # the resumed run logged step 3 only
    for tag in ("cure/code_accuracy", "reward/code_mean", "reward/test_mean", "loss/pg"):
        assert a[tag][-1] == b[tag][-1], tag  # step 3: the same rollout and update
    (sa, da), (sb, db) = _restore(whole, 3), _restore(resumed, 3)
    assert (da["cursor"], da["version"]) == (db["cursor"], db["version"]) == (3, 3)
    la, lb = jax.tree.leaves(sa), jax.tree.leaves(sb)
    assert len(la) == len(lb)
    diff = [i for i, (x, y) in enumerate(zip(la, lb)) if not np.array_equal(np.asarray(x), np.asarray(y))]
    assert diff == [], f"{len(diff)} of {len(la)} state leaves differ"


@pytest.mark.slow
def test_rollout_server_killed_mid_run_fails_fast_and_cleans_up(tmp_path):
    wd = tmp_path / "crash"
    proc = _start(wd, "--config.train.steps=3", "--config.rollout.engine=hf", *SMALL,
                  "--config.train.eval_every=0", "--config.train.checkpoint_every=0")
    lines: list[str] = []
    try:
        server = _server_pid(_read_until(proc, "rollout server pid", lines, 300))
        _read_until(proc, "step 1/3", lines, 300)  # the rollout of step 2 is under way
        tree = [server] + descendants(server)
        with open(f"/proc/{server}/environ", "rb") as f:  # its torch threads sleep when idle
            assert b"OMP_WAIT_POLICY=PASSIVE" in f.read().split(b"\0")
        os.kill(server, signal.SIGKILL)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert elapsed < 15, elapsed
    assert f"rollout server (pid {server}) was killed by signal SIGKILL" in err, err[-3000:]
    assert "step 3/3" not in out
    assert wait_dead(tree, 10.0) == []
    assert segments_of(proc.pid) == []


@pytest.mark.slow
def test_frozen_rollout_server_is_restarted_when_configured(tmp_path):
    """Fault drill: the rollout server stops answering (SIGSTOP, not a crash) mid-run. Its
    silence is caught by the heartbeat timeout, the frozen server and everything it started are
    killed, a new one takes over and the run finishes; nothing of the old one is left."""
    wd = tmp_path / "restart"
    proc = _start(wd, "--config.train.steps=2", "--config.rollout.engine=hf", *SMALL,
                  "--config.rollout.restarts=1", "--config.rollout.heartbeat_timeout_s=10",
                  "--config.train.eval_every=0", "--config.train.checkpoint_every=0")
    lines: list[str] = []
    try:
        server = _server_pid(_read_until(proc, "rollout server pid", lines, 300))
        _read_until(proc, "step 1/2", lines, 300)
        tree = [server] + descendants(server)
        os.kill(server, signal.SIGSTOP)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + out
    assert proc.returncode == 0, err[-3000:]
    assert (f"rollout server (pid {server}) sent no heartbeat for " in out
            and "restarting the rollout server (0 restarts left)" in out), out[-3000:]
    assert "step 2/2 v2" in out
    assert wait_dead(tree, 10.0) == []
    assert segments_of(proc.pid) == []
