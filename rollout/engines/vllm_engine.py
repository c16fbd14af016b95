"""The ``vllm`` backend: vLLM's offline ``LLM`` behind the engine interface.

- n samples per prompt; greedy (temperature 0) requests are sent n times with n = 1 (vLLM
  refuses n > 1 when greedy); request i gets seed ``seed + i``.
- Per-token log-probs from ``logprobs_mode="processed_logprobs"``: the log-softmax of the
  temperature-scaled (and top-k/top-p processed) logits, what the learner recomputes.
- Weights are pushed in place, never by rebuilding the engine or going through disk:
  in-process engines take HF-named tensors directly (:meth:`VLLMEngine.load_weights`);
  engines with worker processes (tensor parallel) map the WeightChannel inside each worker
  (:meth:`VLLMEngine.load_from_channel`, see ``vllm_worker``). Both go through the worker
  extension's ``load_in_place`` (vLLM's ``reload_weights``; on the CPU build with one OpenMP
  thread, see ``vllm_worker``) and reset the prefix cache, or keys/values computed with the
  old weights would be reused.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from rollout.contract.weight_channel import TornReadError, WeightChannel
from rollout.engines.base import (
    EngineConfig,
    Prompt,
    Sample,
    SamplingConfig,
    check_generate_args,
)
from rollout.engines.hf_engine import as_torch
from rollout.engines.vllm_worker import QUALNAME as WORKER_EXTENSION
from rollout.engines.vllm_worker import on_cpu_build


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the engine's construction only, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v



def eager(config: EngineConfig) -> bool:
    """vLLM's enforce_eager: the config's, else eager on the CPU build only (no CUDA graphs
    there; on a GPU a weight push copies into the captured tensors, so graphs stay valid)."""
    return on_cpu_build() if config.enforce_eager is None else bool(config.enforce_eager)

class VLLMEngine:
    """A running vLLM engine configured from :class:`EngineConfig`."""

    def __init__(self, config: EngineConfig) -> None:
        env: dict[str, str] = {}
        if config.in_process is not None:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if config.in_process else "1"
        if config.kv_cache_gb is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gb)
        with _environ(env):
            self._build(config)
        self.tokenizer = self.llm.get_tokenizer()
        self.weights_version = 0  # version of the last weights pushed (0: the model's own)

    def _build(self, config: EngineConfig) -> None:
        import vllm.envs
        from vllm import LLM

        # An earlier in-process engine froze vLLM's env-var cache; read this config's values.
        if hasattr(vllm.envs, "disable_envs_cache"):
            vllm.envs.disable_envs_cache()

        kwargs: dict[str, Any] = dict(
            model=config.model, tokenizer=config.tokenizer or config.model, dtype=config.dtype,
            seed=config.seed, tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=eager(config),
            enable_prefix_caching=config.enable_prefix_caching,
            logprobs_mode="processed_logprobs", worker_extension_cls=WORKER_EXTENSION)
        if config.max_model_len is not None:
            kwargs["max_model_len"] = config.max_model_len
        chunked = config.enable_chunked_prefill
        if chunked is None and on_cpu_build():
            chunked = False  # seeded requests crash chunked prefill there (see EngineConfig)
        if chunked is not None:
            kwargs["enable_chunked_prefill"] = chunked
        if config.distributed_executor_backend is not None:
            kwargs["distributed_executor_backend"] = config.distributed_executor_backend
        self.config = config
        self.llm = LLM(**kwargs)

    @property
    def in_process(self) -> bool:
        """True when the model runs in this process (tensors may be passed directly)."""
        core = self.llm.llm_engine.engine_core
        return type(core).__name__ == "InprocClient" and self.config.tensor_parallel_size == 1

    def _params(self, sampling: SamplingConfig, n: int, seed: int | None) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            max_tokens=sampling.max_tokens, stop=list(sampling.stop) or None, seed=seed,
            logprobs=0 if sampling.logprobs else None)

    def generate(self, prompts: Sequence[Prompt], n: int,
                 sampling: SamplingConfig) -> list[list[Sample]]:
        """n samples per prompt (see base.Sample)."""
        prompts = check_generate_args(prompts, n)
        reps = n if sampling.greedy else 1
        inputs, params = [], []
        for i, p in enumerate(prompts):
            item = p if isinstance(p, str) else {"prompt_token_ids": [int(t) for t in p]}
            sp = self._params(sampling, 1 if sampling.greedy else n, sampling.request_seed(i))
            inputs += [item] * reps
            params += [sp] * reps
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        results: list[list[Sample]] = []
        for i in range(len(prompts)):
            group = outs[i * reps:(i + 1) * reps]
            results.append([self._sample(c, list(o.prompt_token_ids), sampling.logprobs)
                            for o in group for c in o.outputs])
        return results

    @staticmethod
    def _sample(c: Any, prompt_ids: list[int], want_lp: bool) -> Sample:
        toks = list(c.token_ids)
        lp = None
        if want_lp:
            if c.logprobs is None or len(c.logprobs) != len(toks):
                raise RuntimeError("vLLM returned no per-token logprobs for a sample")
            lp = np.fromiter((c.logprobs[j][t].logprob for j, t in enumerate(toks)),
                             dtype=np.float32, count=len(toks))
        reason = c.finish_reason if c.finish_reason in ("stop", "length") else str(c.finish_reason)
        return Sample(toks, c.text, lp, reason, prompt_ids)

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Push HF-named tensors (numpy or torch; zero-copy conversion) into the running engine.

        In-process engines only; engines with worker processes use :meth:`load_from_channel`.
        """
        if not self.in_process:
            raise RuntimeError("VLLMEngine.load_weights: the model runs in worker processes; "
                               "publish the weights to a WeightChannel and call "
                               "load_from_channel(name) instead")
        weights = ((name, as_torch(t)) for name, t in named_tensors)
        self.llm.collective_rpc("cure_load_weights", args=(weights,))
        self.llm.reset_prefix_cache()

    def load_from_channel(self, channel_name: str, min_version: int = 0,
                          timeout: float = 60.0) -> int:
        """Every worker maps the channel and reloads in place; returns the version loaded."""
        versions = self.llm.collective_rpc("cure_load_from_channel",
                                           args=(channel_name, min_version, timeout))
        if len(set(versions)) != 1:
            raise TornReadError(f"WeightChannel {channel_name}: workers loaded different "
                                f"versions {versions}; the channel was republished during "
                                f"the load, load again")
        self.llm.reset_prefix_cache()
        self.weights_version = int(versions[0])
        return self.weights_version

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort
            pass


def push_from_channel(engine: Any, channel: WeightChannel | str, min_version: int = 0,
                      timeout: float = 60.0) -> int:
    """Push the channel's published weights into a running engine in place; returns the version.

    The version is also kept as ``engine.weights_version``, to stamp each sample's policy version.

    In-process vLLM (and the hf backend): the tensors are mapped here with zero copies and
    handed to ``engine.load_weights``. vLLM with worker processes: each worker maps the
    channel itself. Either way the prefix cache is reset afterwards.
    """
    if isinstance(engine, VLLMEngine) and not engine.in_process:
        name = channel if isinstance(channel, str) else channel.name
        return engine.load_from_channel(name, min_version, timeout)
    ch = WeightChannel.attach(channel) if isinstance(channel, str) else channel
    try:
        ch.wait_version(min_version, timeout=timeout)
        with ch.read() as snap:
            engine.load_weights(snap.items())
            engine.weights_version = snap.version
            return snap.version
    finally:
        if isinstance(channel, str):
            ch.close()
