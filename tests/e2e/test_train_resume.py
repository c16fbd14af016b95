"""cure-train as real processes: exact resume after SIGKILL, SIGTERM checkpoints, TensorBoard tags."""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.cure_runs import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 8
FLAGS = [
    "--config=configs/tiny.py:synthetic",
    "--config.model.arch.num_hidden_layers=1",
    f"--config.train.steps={STEPS}",
    "--config.train.checkpoint_every=2",
    "--config.train.histogram_every=2",
    "--config.train.text_every=4",
    "--config.rollout.synthetic.num_prompts=2",
]


def _env() -> dict[str, str]:
    """Two CPU devices, compiled fast (`xla_flags`); the test session's compilation cache is
    inherited (tests/conftest.py)."""
    return dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu")


def _start(workdir: pathlib.Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cure_jax.train_main", *FLAGS, f"--workdir={workdir}", *extra],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(p: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def _params(workdir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """Raw arrays of a checkpoint (no target tree): flat {path: array}."""
    ck = ocp.StandardCheckpointer()
    tree = ck.restore(workdir / "checkpoints" / str(step) / "state")
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}")
        else:
            out[prefix] = np.asarray(node)
    walk(tree, "")
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run of STEPS steps (shared by the tests below)."""
    base = tmp_path_factory.mktemp("resume")
    wd = base / "full"
    out = _finish(_start(wd))
    return base, wd, out


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_exact(reference_run):
    base, full, _ = reference_run
    wd = base / "killed"
    p = _start(wd)
    ck = wd / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        if (ck / "2").is_dir() or (ck / "4").is_dir():
            break
        if p.poll() is not None:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (ck / str(STEPS)).exists(), "the run finished before the kill: nothing tested"
    out = _finish(_start(wd))
    assert "resumed from checkpoint step" in out, out[-2000:]
    a, b = _params(full, STEPS), _params(wd, STEPS)
    assert a.keys() == b.keys() and any("params" in k for k in a)
    assert any("opt_state" in k for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_tensorboard_tags(reference_run):
    _, full, _ = reference_run
    acc = EventAccumulator(str(full / "tb"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    want = {"loss/pg", "loss/kl", "policy/entropy", "loss/clip_frac", "opt/grad_norm", "opt/lr",
            "perf/tokens_per_s", "time/sample_s", "time/update_s", "time/step_s", "reward/mean"}
    assert want <= set(tags["scalars"]), sorted(tags["scalars"])
    assert [e.step for e in acc.Scalars("reward/mean")] == list(range(STEPS))
    assert {"dist/advantage", "dist/log_ratio_learner_vs_rollout"} <= set(tags["histograms"])
    assert any(t.startswith("samples/responses") for t in tags["tensors"])
    lr = [e.value for e in acc.Scalars("opt/lr")]
    assert np.allclose(lr, 3e-3)


@pytest.mark.slow
def test_sigterm_saves_and_exits(reference_run):
    base, _, _ = reference_run
    wd = base / "term"
    p = _start(wd, "--config.train.steps=100000", "--config.train.checkpoint_every=0")
    deadline = time.time() + 240
    tb = wd / "tb"
    # wait until training is under way (first event file written), then ask it to stop
    while time.time() < deadline and not (tb.is_dir() and any(tb.iterdir())):
        assert p.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, out[-2000:]
    steps = sorted(int(d.name) for d in (wd / "checkpoints").iterdir() if d.name.isdigit())
    assert len(steps) == 1 and 1 <= steps[0] < 100000


@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_one_line_error(tmp_path):
    """A damaged checkpoint in the workdir stops cure-train with a clear message, not a trace."""
    wd = tmp_path / "run"
    ckdir = wd / "checkpoints" / "4"
    (ckdir / "state").mkdir(parents=True)
    (ckdir / "driver").mkdir()
    (ckdir / "state" / "garbage").write_text("x")
    r = subprocess.run([sys.executable, "-m", "cure_jax.train_main", *FLAGS, f"--workdir={wd}"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240,
                       check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    last = [line for line in r.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("cure-train: error: checkpoint ") and str(ckdir) in last, r.stderr[-2000:]


@pytest.mark.slow
def test_disk_full_while_checkpointing_then_resume(reference_run):
    """Fault drill: the run directory's filesystem (a tmpfs of root's mounting) fills up after
    the checkpoint of step 4, so that of step 8 cannot be written: one line names it and the
    cause, the checkpoint of step 4 stays intact, and once there is room the same command
    resumes from it and ends where the uninterrupted run did, bit for bit."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    base, full, _ = reference_run
    # Written synchronously, so the checkpoint of step 4 is in place before step 5 starts and
    # the filler lands steps before that of step 8 (an async write may commit after step 8).
    flags = ("--config.train.checkpoint_every=4", "--config.train.async_checkpoint=false")
    wd = base / "disk_full"
    wd.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(wd)], check=True)
    try:
        p = _start(wd, *flags)
        deadline = time.time() + 240
        while not (wd / "checkpoints" / "4").is_dir():  # committed: renamed into place
            assert p.poll() is None and time.time() < deadline, "no checkpoint of step 4"
            time.sleep(0.01)
        # The run is paused while the disk fills: its steps 5-8 take about a second, and on a
        # loaded machine the filler could otherwise land after the checkpoint of step 8.
        p.send_signal(signal.SIGSTOP)
        filler = wd / "filler"
        with open(filler, "wb") as f:  # leave the event files room, not a checkpoint
            f.write(b"\0" * (shutil.disk_usage(wd).free - (256 << 10)))
        p.send_signal(signal.SIGCONT)
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 1, out[-3000:]
        # One line of ours. Orbax's and tensorboardX's threads print their own tracebacks around
        # it, natively and unsynchronised: a fragment of theirs may come just before it.
        ours = [line[line.index("cure-train: error:"):] for line in out.splitlines()
                if "cure-train: error:" in line]
        assert len(ours) == 1 and ours[0].startswith(
            f"cure-train: error: checkpoint {wd / 'checkpoints' / '8'}: ") \
            and "No space left on device" in ours[0], out[-3000:]
        filler.unlink()
        out = _finish(_start(wd, *flags))
        assert "resumed from checkpoint step 4" in out, out[-2000:]
        a, b = _params(full, STEPS), _params(wd, STEPS)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    finally:
        subprocess.run(["umount", "-l", str(wd)], check=False)
