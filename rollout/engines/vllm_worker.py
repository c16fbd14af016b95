"""vLLM worker extension: each worker maps the WeightChannel itself and reloads from it.

vLLM mixes this class into its worker class (``LLM(worker_extension_cls=...)``), so with tensor
parallelism every worker process loads the full HF tensors from shared memory and its own
weight loaders slice out its shard. Only the channel's name crosses the RPC boundary: passing
tensors as ``collective_rpc`` arguments to worker processes corrupts the engine.
"""
from __future__ import annotations

from typing import Any

from rollout import shm
from rollout.engines.hf_engine import as_torch

QUALNAME = "rollout.engines.vllm_worker.ChannelWorkerExtension"


class ChannelWorkerExtension:
    """Methods added to vLLM's worker; call them via ``llm.collective_rpc(name, args=...)``."""

    _cure_channels: dict[str, Any]

    def cure_load_from_channel(self, channel_name: str, min_version: int = 0,
                               timeout: float = 60.0) -> int:
        """Reload the model in place from the channel's published buffer; returns its version."""
        chans = self.__dict__.setdefault("_cure_channels", {})
        ch = chans.get(channel_name)
        if ch is None:
            ch = chans[channel_name] = shm.WeightChannel.attach(channel_name)
        ch.wait_version(min_version, timeout=timeout)
        with ch.read() as snap:
            self.reload_weights(  # type: ignore[attr-defined]
                weights_iterator=((name, as_torch(a)) for name, a in snap.items()))
            return snap.version
