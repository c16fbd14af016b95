"""One process of a 2-process `jax.distributed` weight export (tests/cure_jax/
test_weight_export_multiprocess.py): a tiny learner on a mesh over both processes' devices,
`export_weights` into this process's own WeightChannel, read back and checked.

    JAX_COORDINATOR_ADDRESS=... JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \\
        python -m tests.helpers.weight_export_peer OUT_DIR RUN_ID

Checks, in each process: the parameters really span both processes; the export takes the
re-shard path (no `process_allgather`); what the channel holds equals, bit for bit, the
gathered export (`hf_io.export_hf_arrays`) of the same parameters, in float32 and bfloat16.
Writes the channel's tensors (bfloat16 as uint16 bits) to OUT_DIR/p<i>_<dtype>.npz for the
parent to compare across processes and with a single-process export.
"""
from __future__ import annotations

import pathlib
import sys

import ml_dtypes
import numpy as np

from cure_jax import distributed

MODEL_KW = {"vocab_size": 64, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 32, "rope_theta": 10000.0, "attention_impl": "xla"}
DTYPES = ("float32", "bfloat16")


def make_tiny_learner(mesh):
    """The tiny Qwen learner of the test (seed 0) on `mesh`."""
    from cure_jax.config import LearnerConfig
    from cure_jax.learner import make_learner
    from cure_jax.models.qwen import QwenConfig
    return make_learner(QwenConfig(**MODEL_KW), LearnerConfig(), mesh, seed=0)


def as_bits(a: np.ndarray) -> np.ndarray:
    """A copy of `a` that numpy can save and compare bit for bit (bfloat16 as uint16)."""
    a = np.array(a, copy=True)
    return a.view(np.uint16) if a.dtype == np.dtype(ml_dtypes.bfloat16) else a


def export_and_read(learner, params, dtype: str, run_id: str) -> dict[str, np.ndarray]:
    """export_weights into a fresh channel of this process; its tensors, copied out."""
    from jax.experimental import multihost_utils

    from cure_jax.weight_export import export_weights, weights_capacity
    from rollout.contract.weight_channel import WeightChannel

    calls = []
    real = multihost_utils.process_allgather
    multihost_utils.process_allgather = lambda *a, **k: calls.append(1) or real(*a, **k)
    ch = WeightChannel.create(f"{run_id}_{dtype}", weights_capacity(learner.model_cfg, dtype))
    try:
        nbytes = export_weights(learner, params, ch, version=3, dtype=dtype)
        assert not calls, f"{dtype}: export fell back to process_allgather ({len(calls)} calls)"
        with ch.read() as snap:
            assert snap.version == 3
            got = {name: as_bits(a) for name, a in snap.items()}
        assert nbytes == sum(a.nbytes for a in got.values())
        return got
    finally:
        multihost_utils.process_allgather = real
        ch.close()


def main(out_dir: str, run_id: str) -> None:
    distributed.initialize()
    import jax

    from cure_jax import hf_io, sharding

    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    # Two slices (one process each, as mesh.dcn=2 builds them): the data axis spans the
    # processes, fsdp stays inside each one.
    slices = sharding.make_mesh(data=2, fsdp=2, tp=1, dcn=2)
    assert [{d.process_index for d in row.flat} for row in slices.devices] == [{0}, {1}], \
        slices.devices
    learner = make_tiny_learner(sharding.make_mesh(data=1, fsdp=-1, tp=1))
    params = learner.init_state().params
    spanning = [x for x in jax.tree.leaves(params) if not x.is_fully_addressable]
    assert spanning and not all(hf_io.covers_locally(x) for x in spanning), \
        "the parameters should be sharded across both processes"
    me = jax.process_index()
    for dtype in DTYPES:
        got = export_and_read(learner, params, dtype, run_id)
        want = hf_io.export_hf_arrays(learner.model(params), hf_io.parse_dtype(dtype),
                                      cfg=learner.model_cfg)  # the gathered (allgather) path
        assert list(got) == list(want), (list(got), list(want))
        for name, a in want.items():
            np.testing.assert_array_equal(got[name], as_bits(a), err_msg=f"{dtype} {name}")
        np.savez(pathlib.Path(out_dir) / f"p{me}_{dtype}.npz", **got)
    distributed.barrier("weight_export_peer done")
    print(f"process {me}: OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
