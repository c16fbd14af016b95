"""vLLM worker extension: each worker maps the WeightChannel itself and reloads from it.

vLLM mixes this class into its worker class (``LLM(worker_extension_cls=...)``), so with tensor
parallelism every worker process loads the full HF tensors from shared memory and its own
weight loaders slice out its shard. Only the channel's name crosses the RPC boundary: passing
tensors as ``collective_rpc`` arguments to worker processes corrupts the engine.

How a push lands in the model (:func:`load_in_place`): vLLM's own ``reload_weights``, on every
platform. It runs the model's weight loaders (HF names, q/k/v and gate/up stacking, tied
heads), re-runs each layer's post-load processing and copies the result into the existing
storage (CUDA graphs keep pointing at it). That processing is why a bare
``model.load_weights`` is not enough: on the CPU build every linear weight (and each
embedding's logits copy) was repacked into a oneDNN kernel buffer at load time and the plain
weight dropped, so there is nowhere to copy into without repacking; on GPU, quantized layers
and re-laid-out kernels need the same. (A CPU-only loader that skips the meta-tensor round trip
and stages each layer in a reused warm buffer gains little, see benchmarks/RESULTS.md, and would
depend on vLLM's private reload internals.)

On the CPU build a push runs with one OpenMP thread (:func:`_one_omp_thread`). The push is
memory bound, and vLLM pins its OpenMP team to cores, so where the cores are shared (CI, a
laptop) a parallel copy stalls at every barrier; one thread is several times faster there (see
benchmarks/RESULTS.md). Generation keeps the engine's thread count.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from rollout.contract.weight_channel import WeightChannel
from rollout.engines import staging
from rollout.engines.hf_engine import as_torch

QUALNAME = "rollout.engines.vllm_worker.ChannelWorkerExtension"


def on_cpu_build() -> bool:
    """True when this process runs vLLM's CPU platform."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


@contextlib.contextmanager
def _one_omp_thread() -> Iterator[None]:
    """Run the block with one OpenMP thread, then restore the engine's count.

    vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op once it has pinned its
    threads; ``torch._C.set_num_threads`` is the original, and restoring the count reuses the
    same (still pinned) pool threads.
    """
    import torch

    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch._C.set_num_threads(1)
    try:
        yield
    finally:
        torch._C.set_num_threads(n)


def refresh_tied_cpu_kernels(model: Any) -> int:
    """Repack the CPU logits kernels of layers that share their weight with another layer;
    returns how many were repacked.

    On the CPU build an embedding-method layer (the token embedding, the LM head) keeps its
    weight but also packs a oneDNN copy of it for the logits matmul. With tied embeddings the
    head's weight *is* the embedding's Parameter, and a checkpoint (or a push) carries only
    ``embed_tokens.weight``: ``reload_weights`` refreshes the embedding layer and copies the
    new values into the shared storage, but the head received nothing, so it is left with its
    old packed copy and vLLM computes logits with the weights from before the push. GPU
    builds read the shared Parameter directly and need nothing.
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    owners: dict[int, list[Any]] = {}
    for layer in model.modules():
        w = layer._parameters.get("weight")
        if w is not None and w.numel() and hasattr(layer, "cpu_linear"):
            owners.setdefault(id(w), []).append(layer)
    n = 0
    for layers in owners.values():
        if len(layers) < 2:
            continue
        for layer in layers:
            layer.cpu_linear = None  # free the stale packed copy before packing the new one
            dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
            n += 1
    return n


def load_in_place(worker: Any, weights: Iterable[tuple[str, Any]]) -> None:
    """Load HF-named torch tensors into the worker's running model in place (see above); on a
    GPU they travel through the worker's pinned staging buffers (rollout.engines.staging)."""
    if on_cpu_build():
        with _one_omp_thread():
            worker.reload_weights(weights_iterator=weights)
            refresh_tied_cpu_kernels(worker.model_runner.get_model())
        return
    stage = worker.__dict__.get("_cure_staging")
    if stage is None:
        stage = worker.__dict__["_cure_staging"] = staging.for_device(worker.device)
    if stage is None:
        worker.reload_weights(weights_iterator=weights)
    else:
        worker.reload_weights(weights_iterator=stage.staged(weights))
        stage.synchronize()


class ChannelWorkerExtension:
    """Methods added to vLLM's worker; call them via ``llm.collective_rpc(name, args=...)``."""

    _cure_channels: dict[str, Any]

    def cure_load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """In-process engines: load these HF-named torch tensors in place."""
        load_in_place(self, weights)

    def cure_load_from_channel(self, channel_name: str, min_version: int = 0,
                               timeout: float = 60.0) -> int:
        """Reload the model in place from the channel's published buffer; returns its version."""
        chans = self.__dict__.setdefault("_cure_channels", {})
        ch = chans.get(channel_name)
        if ch is None:
            ch = chans[channel_name] = WeightChannel.attach(channel_name)
        ch.wait_version(min_version, timeout=timeout)
        with ch.read() as snap:
            load_in_place(self, ((name, as_torch(a)) for name, a in snap.items()))
            return snap.version
