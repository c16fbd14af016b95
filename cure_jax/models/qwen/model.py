"""Flax NNX decoder for the Qwen2 / Qwen2.5 / Qwen3 families (training forward only).

    h_0 = E[tokens]
    a   = h + Attn(RMSNorm(h))            causal GQA with RoPE; q/k/v biases (Qwen2) or per-head
                                          q/k RMSNorm (Qwen3)
    h'  = a + W_down(silu(W_gate x) * W_up x),  x = RMSNorm(a)
    out = RMSNorm(h_L)                    logits = out @ E^T (tied) or out @ W_lm

Kernels keep Hugging Face's [out, in] layout (a torch Linear weight), with the head axis of the
attention projections split out by a free reshape (q: [heads, head_dim, embed], o: [embed, heads,
head_dim]), so import and export are pure copies and tensor parallelism can shard heads; the
matmuls contract the `in` axis where it lies (XLA's dot_general needs no transpose). Every
parameter carries `logical_axes` metadata that cure_jax.sharding maps onto the mesh. The decoder
layers' parameters are stored stacked, one [num_layers, ...] array each (`stack_layers`), so the
layers can run as one scan. Parameters live in `param_dtype` (fp32 master weights) and are cast
to `dtype` (e.g. bf16) for compute; norms, softmax statistics and RoPE run in float32.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cure_jax import sharding
from cure_jax.models.qwen.config import QwenConfig
from cure_jax.models.splash_attention import splash_attention

Array = jax.Array
_log = logging.getLogger(__name__)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype,
           init: str = "normal", std: float = 0.02) -> nnx.Param:
    if init == "normal":
        value = std * jax.random.normal(rngs.params(), shape, dtype=jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = jnp.zeros(shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=axes)


class RMSNorm(nnx.Module):
    """y = w * x / sqrt(mean(x^2) + eps), statistics in float32 (as HF Qwen2RMSNorm)."""

    def __init__(self, size: int, eps: float, *, param_dtype, dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.scale = _param(rngs, (size,), ("norm",), param_dtype, init="ones")

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return self.scale[...].astype(self.dtype) * y


def rope_tables(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos/sin [B, L, head_dim] for rotate-half RoPE: inv_freq_i = theta^(-2i/d)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x [B, L, N, D]: x*cos + rotate_half(x)*sin, computed in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def attention_impl_for(requested: str, backend: str, dtype, masked: bool) -> str:
    """The attention the model runs for `requested` (QwenConfig.attention_impl) on `backend`.

    "auto": on CPU the blocked attention (with or without a mask); cuDNN flash attention on
    NVIDIA GPUs for 16-bit compute (its supported dtypes), splash attention on TPU, XLA's
    elsewhere and with a mask (shared prompts, left padding).
    "splash" off TPU or with a mask falls back to XLA's attention, saying so once."""
    if requested == "auto":
        if backend == "cpu":
            return "blocked"
        if masked:
            return "xla"
        if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
            return "cudnn"
        return "splash" if backend == "tpu" else "xla"
    if requested == "splash" and (backend != "tpu" or masked):
        why = "an attention mask (shared prompts or left padding)" if masked else f"a {backend} backend"
        _note_once(f"model.attention_impl=splash: {why}; using XLA's attention instead")
        return "xla"
    return requested


@functools.cache
def _note_once(message: str) -> None:
    _log.warning(message)


def chunked_attention(q: Array, k: Array, v: Array, mask: Array | None, scale: float,
                      block: int = 256) -> Array:
    """Causal attention (q [B, L, N, D], k/v [B, L, K, D], mask [B, 1, L, L] or None) computed
    `block` queries at a time, each block rematerialised in the backward pass: memory grows
    with block x L instead of L x L, as with a flash-attention kernel, on any platform."""
    b, l, n, d = q.shape
    nb = -(-l // block)
    pad = nb * block - l
    blocks = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, nb, block, n, d)
    if mask is not None:
        mask = jnp.pad(jnp.broadcast_to(mask, (b, 1, l, l)), ((0, 0), (0, 0), (0, pad), (0, 0)))
    keys = jnp.arange(l)

    @jax.checkpoint
    def one(i: Array, qb: Array) -> Array:
        queries = i * block + jnp.arange(block)
        m = (keys[None, :] <= queries[:, None])[None, None]
        if mask is not None:
            m = m & jax.lax.dynamic_slice_in_dim(mask, i * block, block, axis=2)
        return jax.nn.dot_product_attention(qb, k, v, mask=m, scale=scale, implementation="xla")
    out = jax.lax.map(lambda a: one(*a), (jnp.arange(nb), blocks.swapaxes(0, 1)))
    return out.swapaxes(0, 1).reshape(b, nb * block, n, d)[:, :l]


def blocked_attention(q: Array, k: Array, v: Array, mask: Array | None, scale: float,
                      min_block: int = 128, max_blocks: int = 4) -> Array:
    """Causal attention (q [B, L, N, D], k/v [B, L, K, D], mask [B, 1, L, L] or None) in blocks
    of queries, each over the keys up to its last query only: the masked upper triangle is
    never computed (n blocks compute (n + 1) / 2n of the scores: 62.5% at 4). XLA's attention
    runs each block; the blocks are unrolled (their shapes differ), at most `max_blocks` of
    them (each is its own program to compile), of at least `min_block` queries. The fastest
    attention here on CPU (benchmarks/RESULTS.md)."""
    l = q.shape[1]
    n = max(1, min(max_blocks, -(-l // min_block)))
    block = -(-l // n)
    out = []
    for start in range(0, l, block):
        stop = min(start + block, l)
        m = jnp.asarray(np.arange(stop)[None, :] <= np.arange(start, stop)[:, None])[None, None]
        if mask is not None:
            m = m & mask[:, :, start:stop, :stop]
        out.append(_attend(q[:, start:stop], k[:, :stop], v[:, :stop], m, scale))
    return jnp.concatenate(out, axis=1)


def _attend(q: Array, k: Array, v: Array, mask: Array, scale: float) -> Array:
    """Masked softmax attention, grouped query heads over their kv head (q [B, T, N, D],
    k/v [B, S, K, D], mask [B, 1, T, S] with at least one key per query). Scores and softmax
    statistics in float32; the normalisation divides the [B, T, N, D] output rather than the
    [B, N, T, S] probabilities (S / D times fewer divisions)."""
    b, t, n, d = q.shape
    kv = k.shape[2]
    scores = jnp.einsum("btkgd,bskd->bkgts", q.reshape(b, t, kv, n // kv, d), k,
                        preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, :, None], scores, -1e30)
    probs = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    total = jnp.moveaxis(jnp.sum(probs, axis=-1), -1, 1)[..., None]          # [B, T, K, G, 1]
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32) / total
    return out.reshape(b, t, n, d).astype(q.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: QwenConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.cfg = cfg
        self.dtype = dtype
        self.q_proj = _param(rngs, (n, d, h), ("q_heads", "head_dim", "embed"), param_dtype)
        self.k_proj = _param(rngs, (k, d, h), ("kv_heads", "head_dim", "embed"), param_dtype)
        self.v_proj = _param(rngs, (k, d, h), ("kv_heads", "head_dim", "embed"), param_dtype)
        self.o_proj = _param(rngs, (h, n, d), ("embed", "q_heads", "head_dim"), param_dtype)
        if cfg.attention_bias:
            self.q_bias = _param(rngs, (n, d), ("q_heads", "head_dim"), param_dtype, init="zeros")
            self.k_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), param_dtype, init="zeros")
            self.v_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), param_dtype, init="zeros")
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    def _proj(self, x: Array, name: str) -> Array:
        w = getattr(self, f"{name}_proj")[...].astype(self.dtype)
        y = jnp.einsum("ble,nde->blnd", x, w)
        if self.cfg.attention_bias:
            y = y + getattr(self, f"{name}_bias")[...].astype(self.dtype)
        return y

    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array | None) -> Array:
        cfg = self.cfg
        q = sharding.constrain(self._proj(x, "q"), ("batch", "length", "act_heads", None))
        k = sharding.constrain(self._proj(x, "k"), ("batch", "length", "act_kv_heads", None))
        v = sharding.constrain(self._proj(x, "v"), ("batch", "length", "act_kv_heads", None))
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        impl = attention_impl_for(cfg.attention_impl, jax.default_backend(), q.dtype,
                                  mask is not None)
        if impl == "cudnn":
            # cuDNN flash attention: causal only. Exact for right-padded rows (later pads are
            # invisible to real tokens under causality); left padding needs the xla path.
            mask = None
        if impl == "chunked":
            out = chunked_attention(q, k, v, mask, cfg.head_dim ** -0.5)
        elif impl == "blocked":
            out = blocked_attention(q, k, v, mask, cfg.head_dim ** -0.5)
        elif impl == "splash":
            out = splash_attention(q, k, v, cfg.head_dim ** -0.5)
        else:
            out = jax.nn.dot_product_attention(
                q, k, v, mask=mask, is_causal=True, scale=cfg.head_dim ** -0.5, implementation=impl)
        out = sharding.constrain(out, ("batch", "length", "act_heads", None))
        w_o = self.o_proj[...].astype(self.dtype)
        return jnp.einsum("blnd,end->ble", out, w_o)


class MLP(nnx.Module):
    """SwiGLU: W_down(silu(W_gate x) * W_up x)."""

    def __init__(self, cfg: QwenConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        h, f = cfg.hidden_size, cfg.intermediate_size
        self.dtype = dtype
        self.gate_proj = _param(rngs, (f, h), ("mlp", "embed"), param_dtype)
        self.up_proj = _param(rngs, (f, h), ("mlp", "embed"), param_dtype)
        self.down_proj = _param(rngs, (h, f), ("embed", "mlp"), param_dtype)

    def __call__(self, x: Array) -> Array:
        gate = jnp.einsum("ble,fe->blf", x, self.gate_proj[...].astype(self.dtype))
        up = jnp.einsum("ble,fe->blf", x, self.up_proj[...].astype(self.dtype))
        act = sharding.constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        return jnp.einsum("blf,ef->ble", act, self.down_proj[...].astype(self.dtype))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: QwenConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        kw = {"param_dtype": param_dtype, "dtype": dtype, "rngs": rngs}
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.self_attn = Attention(cfg, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.mlp = MLP(cfg, **kw)

    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array | None) -> Array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return sharding.constrain(x, ("batch", "length", "act_embed"))


def _remat_policy(name: str) -> Callable | None:
    if name in ("none", "full"):
        return None
    return getattr(jax.checkpoint_policies, name)


def stack_layers(layers: list[DecoderLayer]) -> DecoderLayer:
    """One DecoderLayer whose every parameter holds the given layers' values stacked on a new
    leading axis (logical axis "layers", never sharded): [num_layers, *one layer's shape].

    The model stores its layers this way so that a scan runs one layer's program over them;
    each slice [i] is layer i of the Hugging Face checkpoint (cure_jax.models.qwen.params).
    """
    graphdef = nnx.graphdef(layers[0])
    stacked = jax.tree.map(lambda *ws: jnp.stack(ws), *[nnx.state(layer) for layer in layers])
    for _, var in nnx.to_flat_state(stacked):
        var.set_metadata("logical_axes", ("layers",) + tuple(var.get_metadata()["logical_axes"]))
    return nnx.merge(graphdef, stacked)


class Qwen(nnx.Module):
    """Qwen2/Qwen3 causal LM trunk. `__call__` gives final-normed hidden states; `logits` the head."""

    def __init__(self, cfg: QwenConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 dtype=jnp.float32):
        self.cfg = cfg
        self.param_dtype = param_dtype
        self.dtype = dtype
        kw = {"param_dtype": param_dtype, "dtype": dtype, "rngs": rngs}
        self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
                                   param_dtype)
        self.layers = stack_layers([DecoderLayer(cfg, **kw) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
                                  param_dtype)

    def __call__(self, tokens: Array, positions: Array | None = None,
                 attention_mask: Array | None = None, segment_ids: Array | None = None) -> Array:
        """tokens int32 [B, L] -> final RMS-normed hidden states [B, L, H] in `dtype`.

        attention_mask [B, L] (1 = real token) masks padded keys (every query still sees its own
        position, so no softmax row is empty). For right-padded batches the mask changes nothing
        for real tokens (causality already hides later pads): pass None for the fastest path;
        the cudnn implementation ignores it (right padding assumed; "auto" picks xla when a
        mask is given).
        segment_ids [B, L] (packed prompts, cure_jax.prompt_packing): a token sees earlier
        tokens of its own segment and of segment 0 (the shared prompt); pass positions too.
        positions default to the running count of real tokens (left or right padding alike).
        """
        tokens = jnp.asarray(tokens, jnp.int32)
        b, l = tokens.shape
        if positions is None:
            if attention_mask is None:
                positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
            else:
                positions = jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)
        mask = None
        if segment_ids is not None:
            if attention_mask is not None or self.cfg.attention_impl == "cudnn":
                raise ValueError("segment_ids (shared prompts) need an attention that takes a "
                                 "mask (not cudnn) and no attention_mask")
            seg = jnp.asarray(segment_ids, jnp.int32)
            mask = (seg[:, None, :, None] == seg[:, None, None, :]) | (seg[:, None, None, :] == 0)
        elif attention_mask is not None:
            valid = attention_mask.astype(bool)
            eye = jnp.eye(l, dtype=bool)
            mask = (valid[:, None, None, :] | eye[None, None]) & jnp.ones((b, 1, l, 1), bool)
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        x = jnp.take(self.embed_tokens[...], tokens, axis=0).astype(self.dtype)
        x = sharding.constrain(x, ("batch", "length", "act_embed"))
        x = self._decoder_layers(x, cos, sin, mask)
        return self.norm(x)

    def _decoder_layers(self, x: Array, cos: Array, sin: Array, mask: Array | None) -> Array:
        """The decoder layers over `x`, one slice of the stacked parameters at a time: as one
        `jax.lax.scan` with `scan_layers` (one layer's program, compile time flat in depth; with
        FSDP each layer's weights are gathered inside the loop), else unrolled."""
        graphdef, stacked = nnx.split(self.layers)

        def body(h: Array, layer_state: nnx.State) -> tuple[Array, None]:
            return nnx.merge(graphdef, layer_state)(h, cos, sin, mask), None
        if self.cfg.remat_policy != "none":
            body = jax.checkpoint(body, policy=_remat_policy(self.cfg.remat_policy))
        if self.cfg.scan_layers:
            return jax.lax.scan(body, x, stacked)[0]
        for i in range(self.cfg.num_hidden_layers):
            x = body(x, jax.tree.map(lambda w, i=i: w[i], stacked))[0]
        return x

    def logits(self, hidden: Array) -> Array:
        """hidden [..., H] -> logits [..., V] in float32 (materialises V: small inputs only)."""
        return hidden_to_logits(self, hidden)

    def head_weight(self) -> Array:
        """The [V, H] output projection (the embedding table when tied), in compute dtype."""
        w = self.embed_tokens if self.cfg.tie_word_embeddings else self.lm_head
        return w[...].astype(self.dtype)


def hidden_to_logits(model: Qwen, hidden: Array) -> Array:
    w = model.head_weight()
    return jnp.einsum("...h,vh->...v", hidden.astype(model.dtype), w,
                      preferred_element_type=jnp.float32)
