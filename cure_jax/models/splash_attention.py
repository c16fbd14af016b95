"""Splash attention, the Pallas TPU kernel, as the learner's causal attention on TPU.

The kernel (`jax.experimental.pallas.ops.tpu.splash_attention`) never forms the L x L score
matrix and skips the blocks above the diagonal, so attention memory grows linearly with the
length. It is called once per (row, key/value head): the query heads that share a key/value
head are the kernel's "heads" of one multi-query call, so grouped-query attention needs no
copy of K and V. Under a mesh (`jax.set_mesh`) it runs inside `jax.shard_map`, each device on
its rows (the mesh's batch axes) and its key/value heads (the tensor-parallel axis), since
XLA cannot partition a Pallas kernel by itself. Lengths are padded up to the kernel's block
size; under causality the padding is invisible to real tokens.

`interpret=True` runs the same kernel in Pallas' interpreter on any platform (slow): the tests
check it against XLA's attention on CPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cure_jax import sharding

BLOCK = 128  # query and key block of every kernel pass (the TPU's lane width)


@functools.lru_cache(maxsize=32)
def _kernel(length: int, group: int, interpret: bool):
    """The multi-query kernel for `group` query heads over `length` (a multiple of BLOCK).
    Pallas is imported here, on first use: most processes never need it."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash
    kernel_lib, mask_lib = splash.splash_attention_kernel, splash.splash_attention_mask
    mask = mask_lib.MultiHeadMask([mask_lib.CausalMask((length, length))] * group)
    sizes = kernel_lib.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK,
                                  block_q_dkv=BLOCK, block_kv_dkv=BLOCK,
                                  block_kv_dkv_compute=BLOCK, block_q_dq=BLOCK, block_kv_dq=BLOCK)
    with jax.ensure_compile_time_eval():  # its mask tables: constants, not tracers of one jit
        return kernel_lib.make_splash_mqa(mask, block_sizes=sizes, head_shards=1,
                                          q_seq_shards=1, interpret=interpret)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array, *,
            interpret: bool) -> jax.Array:
    """q [B, K, G, L, D], k/v [B, K, L, D], segments [B, L] -> [B, K, G, L, D] (local shards)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash
    kern = _kernel(q.shape[3], q.shape[2], interpret)

    def one(qh, kh, vh, seg):
        return kern(qh, kh, vh, segment_ids=splash.SegmentIds(q=seg, kv=seg))
    per_head = jax.vmap(one, in_axes=(0, 0, 0, None))
    return jax.vmap(per_head, in_axes=(0, 0, 0, 0))(q, k, v, segments)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float,
                     segment_ids: jax.Array | None = None, *, interpret: bool = False) -> jax.Array:
    """Causal attention: q [B, L, N, D], k/v [B, L, K, D] (N a multiple of K) -> [B, L, N, D].

    segment_ids [B, L] (optional): a token sees only earlier tokens of its own segment (e.g. 1
    for real tokens, 0 for left padding, whose queries then see padding only)."""
    b, length, n, d = q.shape
    kv = k.shape[2]
    padded = -(-length // BLOCK) * BLOCK
    seg = (jnp.zeros((b, length), jnp.int32) if segment_ids is None
           else jnp.asarray(segment_ids, jnp.int32))
    pad = padded - length
    # The kernel does not scale the scores: fold the scale into the queries.
    qs = jnp.pad(q * jnp.asarray(scale, q.dtype), ((0, 0), (0, pad), (0, 0), (0, 0)))
    qs = qs.reshape(b, padded, kv, n // kv, d).transpose(0, 2, 3, 1, 4)   # [B, K, G, L, D]
    ks, vs = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
              for x in (k, v))                                            # [B, K, L, D]
    seg = jnp.pad(seg, ((0, 0), (0, pad)))
    attend = functools.partial(_attend, interpret=interpret)
    mesh = sharding.current_mesh()
    if mesh is not None and set(sharding.MESH_AXES) <= set(mesh.axis_names):
        spec = functools.partial(sharding.logical_to_spec, mesh=mesh)
        q_spec = spec(("batch", "act_kv_heads", None, None, None), qs.shape)
        kv_spec = spec(("batch", "act_kv_heads", None, None), ks.shape)
        seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
        attend = jax.shard_map(attend, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                               out_specs=q_spec, check_vma=False)
    out = attend(qs, ks, vs, seg)                                         # [B, K, G, L, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, padded, n, d)[:, :length]
