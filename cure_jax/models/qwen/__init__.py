"""Qwen2 / Qwen2.5 / Qwen3 decoder in Flax NNX, its config and its HF parameter-name table."""
from cure_jax.models.qwen.config import QwenConfig
from cure_jax.models.qwen.model import Qwen

__all__ = ["Qwen", "QwenConfig"]
