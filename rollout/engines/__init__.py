"""Generation backends behind one interface (see base.py); backends are imported lazily.

``make_engine(config)`` builds the backend named by ``config.backend`` ("vllm" | "hf"); the
config is an :class:`~rollout.engines.base.EngineConfig`, a dict or an ml_collections ConfigDict.
Importing this package pulls in neither torch nor vllm.
"""
from __future__ import annotations

from typing import Any

from rollout.engines.base import Engine, EngineConfig, Sample, SamplingConfig

__all__ = ["Engine", "EngineConfig", "Sample", "SamplingConfig", "make_engine",
           "push_from_channel"]


def make_engine(config: Any) -> Engine:
    """Build the configured backend (imports torch/vllm/transformers only now)."""
    cfg = EngineConfig.from_mapping(config)
    if cfg.backend == "vllm":
        from rollout.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg)
    from rollout.engines.hf_engine import HFEngine

    return HFEngine(cfg)


def push_from_channel(engine: Engine, channel: Any, min_version: int = 0,
                      timeout: float = 60.0) -> int:
    """Push a WeightChannel's published weights into ``engine`` in place; returns the version."""
    from rollout.engines.vllm_engine import push_from_channel as push

    return push(engine, channel, min_version, timeout)
