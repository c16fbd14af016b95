"""GPU placement (cure_jax.placement): mesh.devices / rollout.devices resolved against this
host's GPUs (a fake CUDA_VISIBLE_DEVICES or a fake GPU count), applied by cure-train itself; a
bad split is one line naming the field, at the door (exit status 2, nothing started)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cure_jax import placement
from cure_jax.config import ConfigError, load_config
from tests.helpers.cure_runs import ROOT, cure_train, tiny_config, train_env


def _cfg(rollout: str = "", mesh: str = "", **mesh_sizes):
    """The synthetic tiny config (no data files) with the given split."""
    c = tiny_config("synthetic")
    c.rollout.devices = rollout
    c.mesh.devices = mesh
    c.mesh.update(mesh_sizes)
    return load_config(c)


def _plan(rollout: str = "", mesh: str = "", env=None, gpus: int = 0, processes=None, **sizes):
    return placement.plan(_cfg(rollout, mesh, **sizes), env or {}, gpus=gpus, processes=processes)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------- resolution
def test_split_on_a_counted_host():
    """8 GPUs, no CUDA_VISIBLE_DEVICES: the learner gets every GPU the server does not."""
    p = _plan("4,5,6,7", gpus=8)
    assert p.host == tuple("01234567")
    assert p.learner == ("0", "1", "2", "3") and p.rollout == ("4", "5", "6", "7")
    assert p.learner_visible == "0,1,2,3" and p.rollout_visible == "4,5,6,7"
    assert _plan("4,5,6,7", "0,1", gpus=8).learner == ("0", "1")  # GPUs 2, 3 stay idle


def test_positions_in_an_existing_cuda_visible_devices_become_physical_ids():
    """A scheduler gave the job GPUs 2,3,6,7: config indices count inside that list."""
    env = {"CUDA_VISIBLE_DEVICES": "2,3,6,7"}
    p = _plan("2,3", env=env, gpus=99)  # the count is ignored when the variable is set
    assert p.host == ("2", "3", "6", "7")
    assert p.learner == ("2", "3") and p.rollout == ("6", "7")
    assert placement.rollout_env(p, env)["CUDA_VISIBLE_DEVICES"] == "6,7"
    uuids = {"CUDA_VISIBLE_DEVICES": "GPU-aaa,GPU-bbb"}
    assert _plan("1", env=uuids).rollout_visible == "GPU-bbb"


def test_apply_to_learner_then_replan_still_sees_the_host():
    """cure-train narrows its own CUDA_VISIBLE_DEVICES; the rollout-server source plans again
    later in the same process and must still give the server physical ids."""
    env = {"CUDA_VISIBLE_DEVICES": "2,3,6,7", "OTHER": "x"}
    p = _plan("2,3", env=env)
    placement.apply_to_learner(p, env)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    again = _plan("2,3", env=env, gpus=0)
    assert again == p
    server = placement.rollout_env(again, env)
    assert server["CUDA_VISIBLE_DEVICES"] == "6,7" and server["OTHER"] == "x"
    assert placement.HOST_GPUS_VAR not in server


def test_rollout_without_its_own_gpus_shares_the_learners():
    p = _plan(mesh="0,1", gpus=4)
    assert p.learner_visible == "0,1" and p.rollout == () and p.rollout_visible == "0,1"


def test_no_split_changes_nothing():
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    p = _plan(env=env, gpus=8)
    assert p.learner == ("0", "1") and p.learner_visible is None and p.rollout_visible is None
    placement.apply_to_learner(p, env)
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert placement.rollout_env(p, env) == env


def test_no_gpu_host_is_a_no_op():
    """CPU and TPU hosts: nothing to place, nothing set."""
    p = _plan(gpus=0)
    assert p == placement.Placement()
    env = {"PATH": "/bin"}
    placement.apply_to_learner(p, env)
    assert env == {"PATH": "/bin"} and placement.rollout_env(p, env) == env


# --------------------------------------------------------------------- errors
def test_index_not_on_this_host():
    assert _error(_plan, "5", gpus=4) == \
        "config.rollout.devices: GPU 5 is not on this host (it has 4: 0-3)"
    msg = _error(_plan, "1", "2", env={"CUDA_VISIBLE_DEVICES": "6,7"})
    assert msg == ("config.mesh.devices: GPU 2 is not on this host "
                   "(it has 2: 0-1, CUDA_VISIBLE_DEVICES=6,7)")


@pytest.mark.parametrize("rollout,mesh,field", [("4", "", "rollout"), ("", "0", "mesh")])
def test_devices_on_a_host_without_gpus(rollout, mesh, field):
    msg = _error(_plan, rollout, mesh, gpus=0)
    assert msg.startswith(f"config.{field}.devices: '{rollout or mesh}' names GPUs but this host "
                          "has none (CUDA_VISIBLE_DEVICES is unset and no NVIDIA GPU is listed)")
    assert f"--config.{field}.devices=" in msg and "TPU" in msg
    assert "(CUDA_VISIBLE_DEVICES is set but empty)" in _error(_plan, rollout, mesh,
                                                      env={"CUDA_VISIBLE_DEVICES": ""})


def test_overlap_duplicates_and_malformed_are_caught_without_the_host():
    """load_config rejects these on any machine (Config.validate)."""
    assert _error(_cfg, "0,1", "1") == ("config.mesh.devices: GPU 1 is also in "
                                        "config.rollout.devices (0,1); the learner and the "
                                        "rollout server need separate GPUs")
    assert _error(_cfg, "4,5,4") == "config.rollout.devices: GPU 4 is listed twice (got '4,5,4')"
    assert _error(_cfg, "", "0,0").startswith("config.mesh.devices: GPU 0 is listed twice")
    for bad in ("a,b", "0,,1", "-1", "0;1", "1.0"):
        assert _error(_cfg, bad) == ("config.rollout.devices: must be comma-separated GPU "
                                     f"indices like '4,5,6,7' (got {bad!r})")
    assert _error(_cfg, "", "x").startswith("config.mesh.devices: must be comma-separated")
    assert _cfg(" 4, 5 ").rollout.devices == " 4, 5 "  # spaces are fine


def test_learner_left_without_a_gpu():
    assert _error(_plan, "0,1,2,3", gpus=4) == (
        "config.mesh.devices: no GPU left for the learner: config.rollout.devices=0,1,2,3 "
        "takes all of this host's GPUs (it has 4: 0-3)")


def test_mesh_must_cover_the_learners_gpus():
    assert _plan("4,5,6,7", gpus=8, data=2, fsdp=2, tp=1).learner_visible == "0,1,2,3"
    assert _error(_plan, "4,5,6,7", gpus=8, data=1, fsdp=3, tp=1) == (
        "config.mesh: data*fsdp*tp = 3 is not a multiple of the learner's 4 GPUs of this host "
        "(those not in config.rollout.devices)")
    assert _error(_plan, "4,5,6,7", "0,1", gpus=8, processes=1, data=1, fsdp=4, tp=1) == (
        "config.mesh: data*fsdp*tp = 4 but the learner's 2 GPUs of this host "
        "(config.mesh.devices=0,1)")
    # Two processes with 4 learner GPUs each: a mesh of 8.
    assert _plan("4,5,6,7", gpus=8, processes=2, data=2, fsdp=4, tp=1).learner == tuple("0123")
    assert _error(_plan, "4,5,6,7", gpus=8, processes=2, data=1, fsdp=-1, tp=3).endswith(
        "multiply to 3, which does not divide the learner's 4 GPUs of this host "
        "(those not in config.rollout.devices) x 2 processes = 8")


def test_launch_processes_from_the_environment():
    assert placement.launch_processes({}) == 1
    assert placement.launch_processes({}, distributed=True) is None  # JAX auto-detects
    assert placement.launch_processes({"JAX_COORDINATOR_ADDRESS": "h:1",
                                       "JAX_NUM_PROCESSES": "2"}) == 2
    assert placement.launch_processes({"SLURM_NTASKS": "4"}) == 4


def test_count_gpus_without_a_gpu_library(tmp_path):
    proc = tmp_path / "gpus"
    proc.mkdir()
    for bus in ("0000:01:00.0", "0000:41:00.0"):
        (proc / bus).mkdir()
    assert placement.count_gpus(proc) == 2
    smi = tmp_path / "bin" / "fake-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
                   "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\necho 'GPU 2: NVIDIA H100'\n")
    smi.chmod(0o755)
    assert placement.count_gpus(tmp_path / "none", nvidia_smi=str(smi)) == 3
    assert placement.count_gpus(tmp_path / "none", nvidia_smi=str(tmp_path / "no-smi")) == 0


def test_placement_module_stays_light():
    """Runs at the door: no JAX device, no torch."""
    code = ("import sys; import cure_jax.placement; "
            "assert 'jax' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))


# --------------------------------------------------------------------- cure-train at the door
@pytest.mark.parametrize("flags,message", [
    (("--config.rollout.devices=0,1", "--config.mesh.devices=1"),
     ("config.mesh.devices: GPU 1 is also in config.rollout.devices (0,1); the learner and the "
      "rollout server need separate GPUs")),
    (("--config.rollout.devices=5",),
     ("config.rollout.devices: GPU 5 is not on this host (it has 4: 0-3, "
      "CUDA_VISIBLE_DEVICES=0,1,2,3)")),
])
def test_cli_bad_split_is_one_line_exit_2_before_any_work(tmp_path, flags, message):
    wd = tmp_path / "run"
    env = dict(train_env(), CUDA_VISIBLE_DEVICES="0,1,2,3")
    r = subprocess.run(cure_train(wd, *flags), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert err == [f"cure-train: error: {message}"], r.stderr
    assert not wd.exists()  # validated before any work: no workdir, no rollout server
