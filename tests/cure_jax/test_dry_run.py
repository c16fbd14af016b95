"""`cure-train --dry_run`: memory planned from compiled programs on abstract weights, a plan
that does not fit refused with one line, nothing started or written."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from cure_jax.config import load_config
from cure_jax.dry_run import (
    GIB,
    DoesNotFit,
    check_fits,
    plan_memory,
    planned_config,
    report,
)
from cure_jax.train import build_learner
from tests.helpers.cure_runs import ROOT, tiny_config, xla_flags
from tests.helpers.shm_peers import segments_of


def _cfg(**learner):
    c = tiny_config("random")
    c.learner.update(learner)
    return load_config(c)


def _with_mesh(cfg, **mesh):
    return dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, **mesh))


@pytest.fixture(scope="module")
def base():
    """The tiny random policy's plan, FSDP over the tests' 8 CPU devices."""
    cfg = _cfg()
    return cfg, plan_memory(cfg, build_learner(cfg))


def test_plan_counts_one_devices_share_of_the_state(base):
    cfg, sharded = base
    one = plan_memory(cfg, build_learner(_with_mesh(cfg, data=-1, fsdp=1)))  # replicated
    n = cfg.model.qwen_config().num_params()
    assert one.parameters_count == sharded.parameters_count == n
    assert one.params == n * 4 == one.gradients == one.reference  # fp32, KL to the initial policy
    assert 2 * one.params < one.optimizer <= 2 * one.params + 64  # Adam's moments and counts
    # FSDP over 8 splits every matrix 8 ways; the norms and biases stay whole on each device.
    assert one.params / 8 < sharded.params < one.params / 4
    assert sharded.mesh == {"data": 1, "fsdp": 8, "tp": 1}
    for plan in (one, sharded):
        assert plan.temporaries == max(plan.programs.values()) > 0
        assert plan.total == (plan.params + plan.optimizer + plan.reference + plan.gradients
                              + plan.temporaries)
    # the random variant rolls out 2 problems x (4 codes + 4 tests) of the longest row, 1024
    assert one.micro_batch == (16, 1024)
    assert one.weight_channel > one.params and one.ring_buffer > 16 * 1024 * 8


def test_programs_follow_the_loss(base):
    assert set(base[1].programs) == {"accumulate gradients", "optimizer update",
                                     "reference log-probs"}
    cfg = _cfg(minibatches=2, kl_coef=0.0)
    many = plan_memory(cfg, build_learner(cfg))
    assert set(many.programs) == {"accumulate gradients", "optimizer update", "old log-probs"}
    assert many.micro_batch == (8, 1024)  # one minibatch of half the rows
    assert many.reference == 0


def test_longer_rows_need_more_temporaries():
    def plan(max_len):
        c = tiny_config("random")
        c.learner.share_prompts = False  # packed sequences have coarser lengths
        c.rollout.max_len = max_len
        cfg = load_config(c)
        return plan_memory(cfg, build_learner(cfg))
    short, long = plan(256), plan(1024)
    assert (short.micro_batch, long.micro_batch) == ((16, 256), (16, 1024))
    assert short.temporaries < long.temporaries


def test_a_plan_that_does_not_fit_is_refused(base):
    plan = base[1]
    check_fits(plan, plan.total * 1.1, "mesh.device_memory_gb")
    check_fits(plan, None, "unknown")
    with pytest.raises(DoesNotFit, match=r"^config\.mesh: the plan needs [0-9.]+ GiB per device, "
                                         r"more than the [0-9.]+ GiB a device holds \(here\)"):
        check_fits(plan, plan.total * 0.9, "here")
    text = report(plan, plan.total * 2, "mesh.device_memory_gb")
    assert f"= total {plan.total / GIB:.3g} GiB" in text and "the plan uses 50%" in text
    assert [line for line in text.splitlines() if "per-device" in line]
    text = report(plan, None, "unknown")
    assert "device memory: unknown" in text and "mesh.device_memory_gb" in text


def test_fake_devices_plan_flash_like_attention_without_cpu_fusion():
    cfg = _cfg()
    planned, note = planned_config(cfg, fake_devices=4)
    assert planned.model.attention_impl == "chunked" and "flash" in note
    assert planned.model.scan_layers and not cfg.model.scan_layers
    assert not planned.learner.cpu_dot_fusion and cfg.learner.cpu_dot_fusion
    assert planned_config(cfg, fake_devices=0) == (cfg, "auto")
    xla = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention_impl="xla"))
    planned, note = planned_config(xla, fake_devices=4)
    assert note == "xla" and planned.model.attention_impl == "xla" and planned.model.scan_layers


@pytest.mark.slow
def test_cli_dry_run_starts_nothing_and_exits_1_when_it_does_not_fit(tmp_path):
    """The tiny default's command line on 2 fake devices with a device too small for it."""
    wd = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=xla_flags())
    proc = subprocess.Popen([sys.executable, "-m", "cure_jax.train_main", "--config=configs/tiny.py",
                             f"--workdir={wd}", "--dry_run", "--dry_run_devices=2",
                             "--config.mesh.device_memory_gb=0.001"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, errs = proc.communicate(timeout=300)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, errs)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert any("per-device" in line and "GiB" in line and "total" in line for line in lines), r.stdout
    assert "2-device cpu mesh (data=1 fsdp=2 tp=1)" in r.stdout
    assert "attention chunked (standing in for flash attention)" in r.stdout
    err = [line for line in r.stderr.splitlines() if line.startswith("cure-train")]
    assert len(err) == 1 and err[0].startswith("cure-train: error: config.mesh: the plan needs")
    assert "Traceback" not in r.stderr
    # Other tests run beside this one and make their own segments: only the dry run's count.
    assert not wd.exists() and segments_of(proc.pid) == []
    r = subprocess.run([sys.executable, "-m", "cure_jax.train_main", "--config=configs/tiny.py",
                        f"--workdir={wd}", "--dry_run_devices=2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "--dry_run_devices needs --dry_run" in r.stderr


def test_per_device_bytes_of_a_replicated_and_a_sharded_array():
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from cure_jax.dry_run import _per_device_bytes
    mesh = jax.make_mesh((2,), ("x",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:2])
    tree = {"a": jax.ShapeDtypeStruct((8, 6), jnp.float32, sharding=NamedSharding(mesh, P("x"))),
            "b": jax.ShapeDtypeStruct((5,), jnp.bfloat16, sharding=NamedSharding(mesh, P()))}
    assert _per_device_bytes(tree) == 4 * 6 * 4 + 5 * 2
