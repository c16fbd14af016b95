"""Shape and numerics configuration of a Qwen2/Qwen2.5/Qwen3 decoder, read from a HF config.json.

The same dataclass describes the published checkpoints (shape presets in ``presets/`` beside
this module) and the tiny random models of the tests. Validation happens at construction so a
bad field fails with one line naming it, before any array is allocated.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

# HF `architectures` / `model_type` values we can build, and the family each one belongs to.
_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3"}
ATTENTION_IMPLS = ("xla", "cudnn", "chunked", "blocked", "splash", "auto")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "nothing_saveable")

# The shape presets ship inside the package (package data), so an installed cure-jax has them.
PRESETS_DIR = pathlib.Path(__file__).resolve().parent / "presets"


@dataclasses.dataclass(frozen=True)
class QwenConfig:
    """Architecture of one Qwen decoder plus the numerics/runtime knobs of our implementation.

    family: "qwen2" (Qwen2/Qwen2.5: q/k/v biases) or "qwen3" (q/k RMSNorm, no biases,
      head_dim independent of hidden_size / num_attention_heads).
    attention_impl: "xla", "cudnn" (flash attention on NVIDIA GPUs; causal only, so batches must
      be right-padded), "chunked" (XLA attention a block of queries at a time, memory linear in
      the length on any platform), "blocked" (XLA attention a block of queries at a time over
      the keys up to the block only: the masked upper triangle is skipped; the fastest on
      CPU), "splash" (the Pallas splash-attention kernel on TPU; off TPU or with an attention
      mask, XLA's, with a one-line note) or "auto" (blocked on CPU; with no attention mask,
      cudnn on a GPU with bf16/fp16 compute and splash on TPU; xla elsewhere).
    remat_policy: rematerialisation of each decoder layer in the backward pass ("none" keeps all
      activations; "full" recomputes the whole layer; the others are jax.checkpoint_policies).
    scan_layers: run the decoder layers as one `jax.lax.scan` rather than unrolled: XLA
      compiles one layer whatever the depth, and with FSDP each layer's weights are gathered
      inside the loop, one layer at a time. The parameters are the same either way (stored
      stacked, [num_layers, ...]: Qwen.layers).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    family: str = "qwen2"
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool | None = None
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    torch_dtype: str = "bfloat16"
    attention_impl: str = "auto"
    remat_policy: str = "none"
    scan_layers: bool = False

    def __post_init__(self) -> None:
        if self.family not in ("qwen2", "qwen3"):
            raise ValueError(f"QwenConfig.family: unknown architecture family {self.family!r} "
                             "(expected 'qwen2' or 'qwen3')")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"QwenConfig.{name}: must be a positive int, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"QwenConfig.head_dim: not given and hidden_size={self.hidden_size} is not "
                    f"divisible by num_attention_heads={self.num_attention_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"QwenConfig.head_dim: must be a positive even int, got {self.head_dim!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"QwenConfig.num_key_value_heads: {self.num_key_value_heads} does not divide "
                f"num_attention_heads={self.num_attention_heads}")
        if self.attention_bias is None:
            object.__setattr__(self, "attention_bias", self.family == "qwen2")
        if self.rope_theta <= 0:
            raise ValueError(f"QwenConfig.rope_theta: must be > 0, got {self.rope_theta!r}")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"QwenConfig.rms_norm_eps: must be > 0, got {self.rms_norm_eps!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"QwenConfig.attention_impl: {self.attention_impl!r} not in {ATTENTION_IMPLS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"QwenConfig.remat_policy: {self.remat_policy!r} not in {REMAT_POLICIES}")

    # ----------------------------------------------------------------------------------------
    @property
    def qk_norm(self) -> bool:
        """Qwen3 normalises queries and keys per head (RMSNorm over head_dim) before RoPE."""
        return self.family == "qwen3"

    @property
    def architecture(self) -> str:
        return {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.family]

    def replace(self, **changes: Any) -> QwenConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * d
        layer = attn + 3 * h * self.intermediate_size + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * layer + emb + h

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config", **overrides: Any) -> QwenConfig:
        """Build from the fields of a HF config.json (transformers 4.x and 5.x spellings)."""
        archs = d.get("architectures") or []
        family = None
        for arch in archs:
            if arch in _ARCHITECTURES:
                family = _ARCHITECTURES[arch]
                break
        if family is None:
            family = _MODEL_TYPES.get(d.get("model_type", ""))
        if family is None:
            raise ValueError(
                f"{source}: unknown architecture (architectures={archs!r}, "
                f"model_type={d.get('model_type')!r}); supported: {sorted(_ARCHITECTURES)}")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")
        for name in required:
            if name not in d:
                raise ValueError(f"{source}: missing field {name!r}")
        # transformers 5 moved rope_theta into rope_parameters; 4.x has it top level + rope_scaling.
        rope = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type != "default":
            raise ValueError(f"{source}: rope_type {rope_type!r} is not supported (only 'default')")
        theta = rope.get("rope_theta", d.get("rope_theta", 1_000_000.0 if family == "qwen3" else 10000.0))
        if d.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        kwargs: dict[str, Any] = {
            "vocab_size": d["vocab_size"],
            "hidden_size": d["hidden_size"],
            "intermediate_size": d["intermediate_size"],
            "num_hidden_layers": d["num_hidden_layers"],
            "num_attention_heads": d["num_attention_heads"],
            "num_key_value_heads": d.get("num_key_value_heads") or d["num_attention_heads"],
            "head_dim": d.get("head_dim"),
            "family": family,
            "rope_theta": float(theta),
            "rms_norm_eps": float(d.get("rms_norm_eps", 1e-6)),
            "tie_word_embeddings": bool(d.get("tie_word_embeddings", False)),
            "attention_bias": d.get("attention_bias"),
            "max_position_embeddings": int(d.get("max_position_embeddings", 32768)),
            "bos_token_id": d.get("bos_token_id"),
            "eos_token_id": d.get("eos_token_id"),
            "torch_dtype": str(d.get("dtype") or d.get("torch_dtype") or "bfloat16"),
        }
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_hf_dir(cls, path: str | pathlib.Path, **overrides: Any) -> QwenConfig:
        """Read `<path>/config.json` (or `path` itself when it is a json file)."""
        p = pathlib.Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: config.json not found")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: invalid JSON ({e})") from None
        return cls.from_hf_dict(d, source=str(p), **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> QwenConfig:
        """A shape preset shipped in presets/<name>.json (e.g. 'qwen2.5-7b-instruct')."""
        p = PRESETS_DIR / f"{name}.json"
        if not p.is_file():
            known = sorted(q.stem for q in PRESETS_DIR.glob("*.json"))
            raise ValueError(f"unknown model preset {name!r}; known: {known}")
        return cls.from_hf_dir(p, **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """A HF config.json for this architecture (transformers 4.x and 5.x both read it)."""
        d: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "max_position_embeddings": self.max_position_embeddings,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": self.num_hidden_layers,
            "use_cache": True,
            "torch_dtype": self.torch_dtype,
            "initializer_range": 0.02,
        }
        if self.bos_token_id is not None:
            d["bos_token_id"] = self.bos_token_id
        if self.eos_token_id is not None:
            d["eos_token_id"] = self.eos_token_id
        return d
