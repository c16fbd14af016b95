"""THE parameter-name/layout table between Hugging Face Qwen2/Qwen3 checkpoints and our Flax state.

One row per tensor: HF name, Flax path, layout kind and both shapes. The same rows drive import
(safetensors -> sharded Flax state), export (Flax -> HF numpy arrays / safetensors) and the weight
channel to vLLM, so the two directions cannot drift apart.

Our parameters keep HF's element order ([out, in] for a torch Linear weight), so every row is
at most a reshape, never a transpose:
  copy         flax = hf                                embeddings, lm_head, MLP, norm scales
  split_heads  flax = hf.reshape(flax_shape)            q/k/v [n*d, h] -> [n, d, h],
                                                        o [h, n*d] -> [h, n, d], biases [n*d] -> [n, d]
Import and export are therefore plain copies (and slices of a memory map read only the bytes a
device needs).

The decoder layers are stored stacked (cure_jax.models.qwen.model.stack_layers): a layer's row
names the stacked array ("layers", "mlp", "up_proj") and its `layer`; the tensor is that array's
slice [layer], of shape `flax_shape`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cure_jax.models.qwen.config import QwenConfig

KINDS = ("copy", "split_heads")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    hf_name: str
    flax_path: tuple[Any, ...]      # path in nnx.state(model), e.g. ("layers", "mlp", "up_proj")
    kind: str
    hf_shape: tuple[int, ...]
    flax_shape: tuple[int, ...]     # of this tensor: one layer's slice for a layer's row
    layer: int | None = None        # decoder layer: the row is slice [layer] of flax_path

    def stored_shape(self, num_layers: int) -> tuple[int, ...]:
        """Shape of the array at flax_path (the layers' rows share one stacked array)."""
        return self.flax_shape if self.layer is None else (num_layers, *self.flax_shape)


def param_table(cfg: QwenConfig) -> list[ParamSpec]:
    """Every parameter of the model described by `cfg`, in HF checkpoint order."""
    h, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    n, k, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def same(hf_name, path, shape):
        return ParamSpec(hf_name, path, "copy", shape, shape)

    def split(hf_name, path, hf_shape, flax_shape):
        return ParamSpec(hf_name, path, "split_heads", hf_shape, flax_shape)

    rows: list[ParamSpec] = [same("model.embed_tokens.weight", ("embed_tokens",), (v, h))]
    for i in range(cfg.num_hidden_layers):
        pre, fl = f"model.layers.{i}.", ("layers",)
        attn = fl + ("self_attn",)
        layer = [
            same(pre + "input_layernorm.weight", fl + ("input_layernorm", "scale"), (h,)),
            split(pre + "self_attn.q_proj.weight", attn + ("q_proj",), (n * d, h), (n, d, h)),
            split(pre + "self_attn.k_proj.weight", attn + ("k_proj",), (k * d, h), (k, d, h)),
            split(pre + "self_attn.v_proj.weight", attn + ("v_proj",), (k * d, h), (k, d, h)),
        ]
        if cfg.attention_bias:
            layer += [
                split(pre + "self_attn.q_proj.bias", attn + ("q_bias",), (n * d,), (n, d)),
                split(pre + "self_attn.k_proj.bias", attn + ("k_bias",), (k * d,), (k, d)),
                split(pre + "self_attn.v_proj.bias", attn + ("v_bias",), (k * d,), (k, d)),
            ]
        if cfg.qk_norm:
            layer += [
                same(pre + "self_attn.q_norm.weight", attn + ("q_norm", "scale"), (d,)),
                same(pre + "self_attn.k_norm.weight", attn + ("k_norm", "scale"), (d,)),
            ]
        layer += [
            split(pre + "self_attn.o_proj.weight", attn + ("o_proj",), (h, n * d), (h, n, d)),
            same(pre + "post_attention_layernorm.weight", fl + ("post_attention_layernorm", "scale"), (h,)),
            same(pre + "mlp.gate_proj.weight", fl + ("mlp", "gate_proj"), (f, h)),
            same(pre + "mlp.up_proj.weight", fl + ("mlp", "up_proj"), (f, h)),
            same(pre + "mlp.down_proj.weight", fl + ("mlp", "down_proj"), (h, f)),
        ]
        rows += [dataclasses.replace(row, layer=i) for row in layer]
    rows.append(same("model.norm.weight", ("norm", "scale"), (h,)))
    if not cfg.tie_word_embeddings:
        rows.append(same("lm_head.weight", ("lm_head",), (v, h)))
    return rows


def ignorable_hf_tensor(name: str, cfg: QwenConfig) -> bool:
    """Tensors a HF checkpoint may hold that carry no parameter of ours."""
    if name.endswith("rotary_emb.inv_freq"):
        return True
    return cfg.tie_word_embeddings and name == "lm_head.weight"


def hf_to_flax(spec: ParamSpec, hf: np.ndarray) -> np.ndarray:
    """HF-layout array -> Flax-layout view (a reshape: no copy, memory maps stay lazy)."""
    if tuple(hf.shape) != spec.hf_shape:
        raise ValueError(f"{spec.hf_name}: shape {tuple(hf.shape)}, config expects {spec.hf_shape}")
    return hf.reshape(spec.flax_shape)


def flax_to_hf(spec: ParamSpec, x: np.ndarray) -> np.ndarray:
    """Flax-layout array -> HF-layout view (the exact inverse of hf_to_flax)."""
    if tuple(x.shape) != spec.flax_shape:
        raise ValueError(f"{'/'.join(map(str, spec.flax_path))}: shape {tuple(x.shape)}, "
                         f"config expects {spec.flax_shape}")
    return x.reshape(spec.hf_shape)


def rows_by_array(table: list[ParamSpec]) -> dict[tuple[Any, ...], list[ParamSpec]]:
    """The table's rows grouped by the model array that holds them, in order of first
    appearance: one row per array, or a stacked array's rows in layer order."""
    out: dict[tuple[Any, ...], list[ParamSpec]] = {}
    for spec in table:
        out.setdefault(spec.flax_path, []).append(spec)
    return out
