"""The learner's parameters into a WeightChannel, in Hugging Face names and layout.

Streams: each device shard goes from the learner's buffer straight to its place in the
channel's shared memory (`hf_io.write_hf_arrays` over the channel writer's views), so no host
copy of the model, or of one whole tensor, is built; the version is published after the last
tensor. The tensor list comes from the one parameter-name table of the model family.
"""
from __future__ import annotations

from typing import Any

from cure_jax import hf_io
from rollout.contract.weight_channel import WeightChannel


def export_weights(learner: Any, params: Any, channel: WeightChannel, version: int,
                   dtype: str) -> float:
    """Write `params` into `channel` as `version` in `dtype`; returns the bytes written."""
    with channel.writer(version) as w:
        hf_io.write_hf_arrays(learner.model(params), w, hf_io.parse_dtype(dtype),
                              cfg=learner.model_cfg)
    return float(w.nbytes)


def weights_capacity(model_cfg: Any, dtype: str) -> int:
    """Bytes a WeightChannel needs to hold the whole model in `dtype`."""
    return WeightChannel.required_capacity(hf_io.hf_specs(model_cfg, hf_io.parse_dtype(dtype)))
