"""THE parameter-name/layout table between Hugging Face Qwen2/Qwen3 checkpoints and our Flax state.

One row per tensor: HF name, Flax path, and a layout kind. The same rows drive import
(safetensors -> sharded Flax state), export (Flax -> HF numpy arrays / safetensors) and the weight
channel to vLLM, so the two directions cannot drift apart.

Layout kinds (HF tensors are torch Linear weights, [out, in]):
  copy        same array                          embeddings, RMSNorm scales
  linear      flax[in, out] = hf[out, in]^T       MLP, lm_head
  heads_in    flax[h, n, d] = hf[n*d, h]^T        q/k/v projections (head axis kept apart)
  heads_out   flax[n, d, h] = hf[h, n*d]^T        o projection
  heads_bias  flax[n, d]    = hf[n*d]             q/k/v biases
Each direction is a numpy *view* (transpose/reshape of a memory map costs nothing until a slice
of it is copied), which is what lets import read only the bytes of each device's shard.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cure_jax.models.qwen.config import QwenConfig

KINDS = ("copy", "linear", "heads_in", "heads_out", "heads_bias")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    hf_name: str
    flax_path: tuple[Any, ...]      # path in nnx.state(model), e.g. ("layers", 0, "mlp", "up_proj")
    kind: str
    hf_shape: tuple[int, ...]
    flax_shape: tuple[int, ...]


def param_table(cfg: QwenConfig) -> list[ParamSpec]:
    """Every parameter of the model described by `cfg`, in HF checkpoint order."""
    h, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    n, k, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    rows: list[ParamSpec] = [
        ParamSpec("model.embed_tokens.weight", ("embed_tokens",), "copy", (v, h), (v, h)),
    ]
    for i in range(cfg.num_hidden_layers):
        pre, fl = f"model.layers.{i}.", ("layers", i)
        attn = fl + ("self_attn",)
        rows += [
            ParamSpec(pre + "input_layernorm.weight", fl + ("input_layernorm", "scale"), "copy", (h,), (h,)),
            ParamSpec(pre + "self_attn.q_proj.weight", attn + ("q_proj",), "heads_in", (n * d, h), (h, n, d)),
            ParamSpec(pre + "self_attn.k_proj.weight", attn + ("k_proj",), "heads_in", (k * d, h), (h, k, d)),
            ParamSpec(pre + "self_attn.v_proj.weight", attn + ("v_proj",), "heads_in", (k * d, h), (h, k, d)),
        ]
        if cfg.attention_bias:
            rows += [
                ParamSpec(pre + "self_attn.q_proj.bias", attn + ("q_bias",), "heads_bias", (n * d,), (n, d)),
                ParamSpec(pre + "self_attn.k_proj.bias", attn + ("k_bias",), "heads_bias", (k * d,), (k, d)),
                ParamSpec(pre + "self_attn.v_proj.bias", attn + ("v_bias",), "heads_bias", (k * d,), (k, d)),
            ]
        if cfg.qk_norm:
            rows += [
                ParamSpec(pre + "self_attn.q_norm.weight", attn + ("q_norm", "scale"), "copy", (d,), (d,)),
                ParamSpec(pre + "self_attn.k_norm.weight", attn + ("k_norm", "scale"), "copy", (d,), (d,)),
            ]
        rows += [
            ParamSpec(pre + "self_attn.o_proj.weight", attn + ("o_proj",), "heads_out", (h, n * d), (n, d, h)),
            ParamSpec(pre + "post_attention_layernorm.weight", fl + ("post_attention_layernorm", "scale"),
                      "copy", (h,), (h,)),
            ParamSpec(pre + "mlp.gate_proj.weight", fl + ("mlp", "gate_proj"), "linear", (f, h), (h, f)),
            ParamSpec(pre + "mlp.up_proj.weight", fl + ("mlp", "up_proj"), "linear", (f, h), (h, f)),
            ParamSpec(pre + "mlp.down_proj.weight", fl + ("mlp", "down_proj"), "linear", (h, f), (f, h)),
        ]
    rows.append(ParamSpec("model.norm.weight", ("norm", "scale"), "copy", (h,), (h,)))
    if not cfg.tie_word_embeddings:
        rows.append(ParamSpec("lm_head.weight", ("lm_head",), "linear", (v, h), (h, v)))
    return rows


# Tensors a HF checkpoint may hold that carry no parameter of ours.
def ignorable_hf_tensor(name: str, cfg: QwenConfig) -> bool:
    if name.endswith("rotary_emb.inv_freq"):
        return True
    return cfg.tie_word_embeddings and name == "lm_head.weight"


def hf_to_flax_view(spec: ParamSpec, hf: np.ndarray) -> np.ndarray:
    """HF-layout array -> Flax-layout *view* (no copy for memory maps)."""
    if tuple(hf.shape) != spec.hf_shape:
        raise ValueError(f"{spec.hf_name}: shape {tuple(hf.shape)}, config expects {spec.hf_shape}")
    if spec.kind == "copy":
        return hf
    if spec.kind == "linear":
        return hf.T
    if spec.kind == "heads_in":
        h, n, d = spec.flax_shape
        return hf.reshape(n, d, h).transpose(2, 0, 1)
    if spec.kind == "heads_out":
        n, d, h = spec.flax_shape
        return hf.reshape(h, n, d).transpose(1, 2, 0)
    if spec.kind == "heads_bias":
        return hf.reshape(spec.flax_shape)
    raise ValueError(f"{spec.hf_name}: unknown layout kind {spec.kind!r}")


def flax_to_hf(spec: ParamSpec, x: np.ndarray) -> np.ndarray:
    """Flax-layout array -> contiguous HF-layout array (the exact inverse of hf_to_flax_view)."""
    if tuple(x.shape) != spec.flax_shape:
        raise ValueError(f"{'/'.join(map(str, spec.flax_path))}: shape {tuple(x.shape)}, "
                         f"config expects {spec.flax_shape}")
    if spec.kind == "copy":
        out = x
    elif spec.kind == "linear":
        out = x.T
    elif spec.kind == "heads_in":
        h, n, d = spec.flax_shape
        out = x.transpose(1, 2, 0).reshape(n * d, h)
    elif spec.kind == "heads_out":
        n, d, h = spec.flax_shape
        out = x.transpose(2, 0, 1).reshape(h, n * d)
    elif spec.kind == "heads_bias":
        out = x.reshape(spec.hf_shape)
    else:
        raise ValueError(f"{spec.hf_name}: unknown layout kind {spec.kind!r}")
    return np.ascontiguousarray(out)
