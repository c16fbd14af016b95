"""The learner's parameters into a WeightChannel, in Hugging Face names and layout.

Streams: each device shard goes from the learner's buffer straight to its place in the
channel's shared memory (`hf_io.write_hf_arrays` over the channel writer's views), so no host
copy of the model, or of one whole tensor, is built; the version is published after the last
tensor. The tensor list comes from the one parameter-name table of the model family.

Several processes (one per host, `jax.distributed`): every host's rollout engine needs the
whole policy, but the learner's parameters are sharded over a mesh that spans the hosts. So
each process first re-shards them, all in one jitted call (XLA schedules the collectives
together; the cast to the export dtype runs before them, so a bf16 export moves half the
bytes), to `sharding.host_local_shardings`: a whole copy per host, split over its own devices.
Then each process streams its own shards into its own host's channel, as in one process.
With one process nothing changes: no re-shard, no extra copy.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from cure_jax import hf_io
from cure_jax import sharding as sharding_lib
from rollout.contract.weight_channel import WeightChannel


def export_weights(learner: Any, params: Any, channel: WeightChannel, version: int,
                   dtype: str) -> float:
    """Write `params` into `channel` as `version` in `dtype`; returns the bytes written.

    With several processes every process must call it (same step, same order): the re-shard
    is a collective.
    """
    out_dtype = hf_io.parse_dtype(dtype)
    if jax.process_count() > 1:
        params = host_local_params(params, learner.mesh, out_dtype)
    with channel.writer(version) as w:
        hf_io.write_hf_arrays(learner.model(params), w, out_dtype, cfg=learner.model_cfg)
    return float(w.nbytes)


def host_local_params(params: Any, mesh: jax.sharding.Mesh, dtype: np.dtype) -> Any:
    """`params` with every leaf that some process does not hold whole re-sharded (and cast to
    `dtype`) so that each does: one jitted call over all of them, a collective (the choice of
    leaves is the same in every process). Leaves already whole on every host are kept."""
    leaves, treedef = jax.tree.flatten(params)
    todo = [i for i, x in enumerate(leaves) if not hf_io.covers_locally(x)]
    if not todo:
        return params
    moving = [leaves[i] for i in todo]
    targets = tuple(sharding_lib.host_local_shardings(moving, mesh))
    moved = _reshard_fn(targets, np.dtype(dtype).name)(moving)
    for i, x in zip(todo, moved):
        leaves[i] = x
    return jax.tree.unflatten(treedef, leaves)


@functools.lru_cache(maxsize=8)
def _reshard_fn(targets: tuple[jax.sharding.NamedSharding, ...], dtype: str) -> Any:
    """The jitted cast + re-shard of a list of arrays to `targets` (cached: the learner's
    layout is fixed, so it compiles once per run and export dtype)."""
    return jax.jit(lambda xs: [x.astype(dtype) for x in xs], out_shardings=list(targets))


def weights_capacity(model_cfg: Any, dtype: str) -> int:
    """Bytes a WeightChannel needs to hold the whole model in `dtype`."""
    return WeightChannel.required_capacity(hf_io.hf_specs(model_cfg, hf_io.parse_dtype(dtype)))
