"""Weights to every host: `export_weights` with the learner over 2 real `jax.distributed`
processes (2 fake CPU devices each, gloo) writes the whole policy into each process's own
WeightChannel, bit-exact with a single-process export of the same seeded parameters. (The
children also check the 2-slice mesh, `mesh.dcn = 2`: one process per slice.)

The children (tests/helpers/weight_export_peer.py) check themselves against the gathered
export and that no `process_allgather` ran; here both must exit 0, agree with each other and
with the export of the same learner built in this one process.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from cure_jax import hf_io, sharding
from rollout.contract.segments import SHM_DIR, list_segments
from tests.helpers.cure_runs import xla_flags
from tests.helpers.shm_peers import ROOT, run_id
from tests.helpers.weight_export_peer import DTYPES, as_bits, make_tiny_learner

pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_peers(out_dir: str, run: str, n: int = 2) -> list[subprocess.Popen]:
    """`n` processes of one jax.distributed job, 2 CPU devices each."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(2),
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES=str(n))
    return [subprocess.Popen([sys.executable, "-m", "tests.helpers.weight_export_peer", out_dir,
                              run], env=dict(env, JAX_PROCESS_ID=str(i)), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(n)]


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Each child's exit status and output once all exited; kills all (and fails) past
    `timeout`."""
    outs = []
    try:
        for p in procs:
            out = p.communicate(timeout=timeout)[0]
            outs.append((p.returncode, out))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"weight export peers still running after {timeout:.0f}s")
    return outs


def _remove_segments(run: str) -> list[str]:
    """Unlink what a crashed child may have left; returns the names found."""
    left = [n for dtype in DTYPES for n in list_segments(f"{run}_{dtype}")]
    for n in left:
        os.unlink(os.path.join(SHM_DIR, n))
    return left


def _single_process_export(dtype: str) -> dict[str, np.ndarray]:
    """The same seeded learner's parameters, on one device of this process, exported."""
    learner = make_tiny_learner(sharding.make_mesh(data=1, fsdp=1, tp=1,
                                                   devices=jax.devices()[:1]))
    params = learner.init_state().params
    arrays = hf_io.export_hf_arrays(learner.model(params), hf_io.parse_dtype(dtype),
                                    cfg=learner.model_cfg)
    return {name: as_bits(a) for name, a in arrays.items()}


@pytest.mark.slow
def test_two_processes_export_whole_policy_to_each_host(tmp_path):
    run = run_id()
    try:
        outs = _wait(_spawn_peers(str(tmp_path), run), timeout=180)
    finally:
        left = _remove_segments(run)
    for i, (rc, out) in enumerate(outs):
        assert rc == 0 and f"process {i}: OK" in out, f"process {i} (rc {rc}):\n{out[-4000:]}"
    assert not left, f"shared memory left behind: {left}"
    for dtype in DTYPES:
        want = _single_process_export(dtype)
        for i in range(2):
            with np.load(tmp_path / f"p{i}_{dtype}.npz") as got:
                assert sorted(got.files) == sorted(want)
                for name, a in want.items():
                    assert got[name].dtype == a.dtype and got[name].shape == a.shape, name
                    np.testing.assert_array_equal(got[name], a, err_msg=f"p{i} {dtype} {name}")


def test_host_local_shardings_split_over_local_devices():
    """One process: a (1, 8) ("host", "local") mesh; the learner's split dimension is kept when
    the local device count divides it, else the first one it divides, else replicated."""
    mesh = sharding.make_mesh(data=1, fsdp=-1, tp=1)
    src = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "fsdp"))
    leaves = {"kept": jax.ShapeDtypeStruct((12, 16), np.float32, sharding=src),
              "first": jax.ShapeDtypeStruct((16, 12), np.float32, sharding=src),
              "odd": jax.ShapeDtypeStruct((3, 5), np.float32)}
    out = sharding.host_local_shardings(leaves, mesh)
    assert dict(out["kept"].mesh.shape) == {"host": 1, "local": 8}
    assert set(out["kept"].mesh.devices.flat) == set(mesh.devices.flat)
    assert out["kept"].spec == jax.sharding.PartitionSpec(None, "local")
    assert out["first"].spec == jax.sharding.PartitionSpec("local", None)
    assert out["odd"].spec == jax.sharding.PartitionSpec(None, None)
