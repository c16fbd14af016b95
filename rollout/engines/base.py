"""The one generation interface every rollout backend implements, and its config types.

``generate(prompts, n, sampling) -> list[list[Sample]]``: for each prompt (a string or a list of
token ids) ``n`` samples, each with its token ids, text, per-token log-probs and finish reason.

Log-probs are the *processed* ones, i.e. of the distribution actually sampled from:
``log softmax(z / T)`` of the logits ``z`` at temperature ``T`` (and, for greedy decoding, of the
raw logits). With ``top_p = 1`` and ``top_k`` off this is exactly what the learner computes, so
importance ratios between learner and rollout are consistent; with truncation the support is
renormalized (vLLM's ``processed_logprobs``; HF ``output_scores``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np

from rollout.contract.config import Section, check
from rollout.contract.sections import SamplingFields, check_sampling

Prompt = Union[str, Sequence[int]]

BACKENDS = ("vllm", "hf")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class SamplingConfig(Section):
    """How to sample one request: the one sampling type of every engine and of every caller.
    ``temperature == 0`` means greedy; ``seed`` seeds request i with seed + i (None: unseeded).
    Config sections hold the sampler fields; :meth:`of` turns them into this."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        super().__post_init__()

    def validate(self, path: str) -> None:
        check_sampling(self, path, greedy_ok=True)
        check(all(self.stop), f"{path}.stop", f"must be non-empty strings (got {self.stop!r})")

    @classmethod
    def of(cls, fields: SamplingFields, *, seed: int | None, logprobs: bool,
           stop: Sequence[str] = ()) -> SamplingConfig:
        """The sampling of a config section's sampler fields (temperature, top_p, top_k,
        max_tokens: :class:`rollout.contract.sections.SamplingFields`)."""
        return cls(temperature=fields.temperature, top_p=fields.top_p, top_k=fields.top_k,
                   max_tokens=fields.max_tokens, stop=tuple(stop), seed=seed, logprobs=logprobs)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def request_seed(self, i: int) -> int | None:
        return None if self.seed is None else self.seed + i


@dataclasses.dataclass
class Sample:
    """One generated response.

    ``token_ids`` are the response tokens only (an EOS the model emitted is kept; a stop string
    ends the text before it, the tokens up to the one completing it are kept), ``logprobs``
    float32 [len(token_ids)], ``finish_reason`` "stop" (EOS or stop string) or "length".
    """

    token_ids: list[int]
    text: str
    logprobs: np.ndarray | None
    finish_reason: str
    prompt_token_ids: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Which backend serves which model, and how. Fields not used by a backend are ignored."""

    backend: str = "vllm"
    model: str = ""
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    # vLLM
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool | None = None  # None: eager on the CPU build only (no CUDA graphs there)
    enable_prefix_caching: bool = True
    distributed_executor_backend: str | None = None  # None: vLLM's choice; "uni": in-process
    in_process: bool | None = None  # sets VLLM_ENABLE_V1_MULTIPROCESSING=0 when True
    kv_cache_gb: int | None = None  # CPU build only (VLLM_CPU_KVCACHE_SPACE, whole GB)
    # None: vLLM's default, except on the CPU build, where it is off: a seeded request whose
    # prefill is split into chunks crashes that build ("CPU Generator does not use offset").
    enable_chunked_prefill: bool | None = None
    # hf
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"engine.backend={self.backend!r}: use one of {BACKENDS}")
        if not self.model:
            raise ValueError("engine.model: give a Hugging Face model directory or hub id")
        if self.dtype not in DTYPES:
            raise ValueError(f"engine.dtype={self.dtype!r}: use one of {DTYPES}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"engine.tensor_parallel_size={self.tensor_parallel_size}: must be >= 1")
        if not (0 < self.gpu_memory_utilization <= 1):
            raise ValueError(f"engine.gpu_memory_utilization={self.gpu_memory_utilization}: "
                             f"must be in (0, 1]")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"engine.max_model_len={self.max_model_len}: must be >= 1")
        if self.kv_cache_gb is not None:
            # vLLM's CPU build parses VLLM_CPU_KVCACHE_SPACE as an int: 1.0 must reach it as "1"
            if float(self.kv_cache_gb) != int(self.kv_cache_gb) or int(self.kv_cache_gb) < 1:
                raise ValueError(f"engine.kv_cache_gb={self.kv_cache_gb}: must be a whole number >= 1")
            object.__setattr__(self, "kv_cache_gb", int(self.kv_cache_gb))

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | Any) -> EngineConfig:
        """From a dict or ml_collections ConfigDict; an unknown field is a one-line error."""
        if isinstance(m, cls):
            return m
        if hasattr(m, "to_dict"):
            m = m.to_dict()
        m = dict(m)
        if "engine" in m and "backend" not in m:  # rollout.engine = "vllm" | "hf"
            m["backend"] = m.pop("engine")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(m) - names)
        if unknown:
            raise ValueError(f"engine config: unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**m)


@runtime_checkable
class Engine(Protocol):
    """What the rollout server needs from a backend."""

    weights_version: int  # version of the last weights pushed (0: the model's own)

    def generate(self, prompts: Sequence[Prompt], n: int,
                 sampling: SamplingConfig) -> list[list[Sample]]: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None: ...

    def close(self) -> None: ...


def check_generate_args(prompts: Sequence[Prompt], n: int) -> list[Prompt]:
    """Validate ``generate`` arguments; returns the prompts as a list."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError("generate(prompts=...): pass a list of prompts, not one string")
    prompts = list(prompts)
    if n < 1:
        raise ValueError(f"generate(n={n}): must be >= 1")
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            continue
        if not len(p) or not all(isinstance(t, (int, np.integer)) for t in p):
            raise TypeError(f"generate: prompt {i} must be a string or a non-empty list of "
                            f"token ids")
    return prompts


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; returns (text, whether one was found)."""
    cut = min((j for j in (text.find(s) for s in stop) if j >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)
