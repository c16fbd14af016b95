"""cure-train as two processes of one run on this machine (the README's two-process launch):
CPU, 2 fake devices each, collectives over gloo, one rollout server per process.

Learner only: 2 processes give the loss and the parameters of 1 process (4 devices) within
1e-5. CURE (the random policy, the hf engine): one process SIGKILLed mid-run: the other ends
within 2 minutes with a one-line error, no process or shared memory segment of the run is
left, and the same command resumes the run to its end; process 0 alone writes TensorBoard,
checkpoints are written, and every step trains on the rows of all its problems.
"""
from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
import pytest

from rollout.contract.procs import descendants
from rollout.contract.segments import list_segments
from rollout.plot_run import read_scalars
from tests.helpers.cure_runs import launch, output, tiny_config
from tests.helpers.shm_peers import wait_dead

STEPS = ("--config.train.steps=3",)


def _finish(procs, timeout: float = 600) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _run(workdir, processes: int, *flags: str, variant: str, devices: int = 2) -> None:
    codes = _finish(launch(workdir, processes, *flags, variant=variant, devices=devices))
    errs = "\n".join(output(workdir, i, "err")[-2000:] for i in range(processes))
    assert codes == [0] * processes, errs


def _series(workdir, tag: str) -> list[float]:
    return [v for _, v in sorted(read_scalars(workdir)[tag])]


def _params(workdir):
    from cure_jax.checkpoint import Checkpointer
    from cure_jax.config import load_config
    from cure_jax.train import build_learner

    learner = build_learner(load_config(tiny_config("synthetic")))
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    try:
        step, state, _ = ckpt.restore_latest(learner.abstract_state())
    finally:
        ckpt.close()
    return step, jax.tree.leaves(jax.device_get(state.params))


@pytest.mark.slow
def test_learner_only_on_two_processes_equals_one_process(tmp_path):
    # AdamW turns float32 rounding of the gradient sums (rows meet in another order; with the
    # tiny configs' shared prompts each process also packs its own rows, so attention sums run
    # over other lengths) into parameter differences proportional to the learning rate: at
    # 1e-3 they stay below 5e-5, 5% of one update (a wrong mask or row would move the losses).
    flags = (*STEPS, "--config.train.checkpoint_every=3", "--config.learner.lr=1e-3")
    _run(tmp_path / "one", 1, *flags, variant="synthetic", devices=4)
    _run(tmp_path / "two", 2, *flags, variant="synthetic")
    for tag in ("loss/pg", "loss/kl", "opt/grad_norm", "reward/mean"):
        one, two = _series(tmp_path / "one", tag), _series(tmp_path / "two", tag)
        assert len(one) == 3
        np.testing.assert_allclose(two, one, rtol=0, atol=1e-5, err_msg=tag)
    (s1, p1), (s2, p2) = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert s1 == s2 == 3
    assert max(float(np.abs(a - b).max()) for a, b in zip(p1, p2)) < 5e-5
    assert any(float(np.abs(a - b).max()) > 0 for a, b in zip(p1, _params_at_init()))


def _params_at_init():
    from cure_jax.config import load_config
    from cure_jax.train import build_learner
    return jax.tree.leaves(jax.device_get(build_learner(load_config(tiny_config("synthetic")))
                                          .init_state().params))


def _wait_for(workdir, index: int, needle: str, procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in output(workdir, index):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise AssertionError(f"{needle!r} not printed by process {index}: "
                                 f"{output(workdir, index)[-1500:]}"
                                 f"{output(workdir, index, 'err')[-1500:]}")
        time.sleep(0.5)


@pytest.mark.slow
def test_cure_on_two_processes_killed_then_resumed(tmp_path):
    wd = tmp_path / "run"
    # The hf engine: this test is about the processes, and it starts four rollout servers.
    flags = (*STEPS, "--config.train.checkpoint_every=1", "--config.train.eval_every=3",
             "--config.rollout.engine=hf")
    procs = launch(wd, 2, *flags, variant="random")
    try:
        _wait_for(wd, 0, "step 1/3", procs, 300)
        deadline = time.monotonic() + 60
        while not (wd / "checkpoints" / "1").is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)  # the checkpoint of step 1 is committed: a resume has it
        tree = [p.pid for p in procs] + [d for p in procs for d in descendants(p.pid)]
        os.kill(procs[1].pid, signal.SIGKILL)
        t0 = time.monotonic()
        code = procs[0].wait(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert code != 0 and elapsed < 120, elapsed
    err = output(wd, 0, "err")
    assert "cure-train: error: process 1 of 2 stopped; stopping this process too\n" in err, err[-3000:]
    assert "step 3/3" not in output(wd, 0)
    assert wait_dead(tree, 15.0) == []
    owners = {str(p.pid) for p in procs}
    deadline = time.monotonic() + 10
    while [n for n in list_segments() if n.rsplit("-", 1)[-1] in owners] and time.monotonic() < deadline:
        time.sleep(0.25)
    assert [n for n in list_segments() if n.rsplit("-", 1)[-1] in owners] == []

    _run(wd, 2, *flags, variant="random")  # the same command resumes the run to its end
    assert "resumed from checkpoint step " in output(wd, 0)
    assert "step 3/3" in output(wd, 0) and "step 3/3" not in output(wd, 1)
    # Process 0 alone writes TensorBoard (one event file per launch) and checkpoints.
    assert len(list((wd / "tb").rglob("events.out.tfevents*"))) == 2
    assert (wd / "checkpoints" / "3").is_dir()
    for i in (0, 1):  # one rollout server per process, its files apart
        assert (wd / f"rollout_server.p{i}.log").is_file()
    # Every step trains on the rows of all the step's problems, whichever process sampled them,
    # and the evaluation covers the configured problems once, split over the two servers.
    r, e = tiny_config("random").rollout, tiny_config("random").eval
    assert _series(wd, "batch/rows") == [r.problems_per_step * (r.k_code + r.k_case)] * 3
    assert _series(wd, "eval/problems") and set(_series(wd, "eval/problems")) == {e.max_problems}
