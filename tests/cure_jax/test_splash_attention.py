"""Splash attention (the Pallas TPU kernel) and the choice of attention per platform.

The kernel runs in Pallas' interpreter on CPU, so its use here (grouped-query heads, lengths
padded to its block, segment ids, jax.shard_map over a mesh) is checked against XLA's
attention, values and gradients, without a TPU."""
from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cure_jax import sharding
from cure_jax.config import load_config
from cure_jax.dry_run import planned_config
from cure_jax.models.qwen import QwenConfig
from cure_jax.models.qwen import model as model_lib
from cure_jax.models.qwen.model import Qwen, attention_impl_for
from cure_jax.models.splash_attention import splash_attention
from tests.helpers.cure_runs import tiny_config

B, L, N, K, D = 2, 200, 4, 2, 32  # L is not a multiple of the kernel's block of 128


def _inputs():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(B, L, N, D)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(B, L, K, D)), jnp.float32) for _ in range(2))
    # row 0: no padding; row 1: 37 left pads (segment 0) before its real tokens (segment 1)
    seg = np.ones((B, L), np.int32)
    seg[1, :37] = 0
    return q, k, v, jnp.asarray(seg)


def _xla(q, k, v, seg):
    same = seg[:, None, :, None] == seg[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True, scale=D ** -0.5)


def _splash(q, k, v, seg):
    return splash_attention(q, k, v, D ** -0.5, seg, interpret=True)


def _loss(attend):
    w = jnp.asarray(np.random.default_rng(1).normal(size=(B, L, N, D)), jnp.float32)
    return lambda q, k, v, seg: jnp.sum(attend(q, k, v, seg) * w)


@pytest.mark.parametrize("mesh_shape", [None, (1, 2, 2)], ids=["one-device", "fsdp2-tp2"])
def test_splash_kernel_equals_xla_attention(mesh_shape):
    q, k, v, seg = _inputs()
    want = _xla(q, k, v, seg)
    want_grads = jax.grad(_loss(_xla), argnums=(0, 1, 2))(q, k, v, seg)
    fn = jax.jit(lambda *a: (_splash(*a), jax.grad(_loss(_splash), argnums=(0, 1, 2))(*a)))
    if mesh_shape is None:
        got, grads = fn(q, k, v, seg)
    else:
        data, fsdp, tp = mesh_shape
        mesh = sharding.make_mesh(data=data, fsdp=fsdp, tp=tp, devices=jax.devices()[:4])
        with jax.set_mesh(mesh):
            got, grads = fn(q, k, v, seg)
            # inside shard_map each device ran its own rows and key/value heads
            assert "shard_map" in str(jax.make_jaxpr(_splash)(q, k, v, seg))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    for name, g, w in zip("qkv", grads, want_grads):
        np.testing.assert_allclose(g, w, atol=2e-4, rtol=1e-4, err_msg=f"d/d{name}")


def test_causal_splash_without_segments_equals_causal_attention():
    q, k, v, _ = _inputs()
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=D ** -0.5)
    got = splash_attention(q, k, v, D ** -0.5, interpret=True)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("requested,backend,dtype,masked,expected", [
    ("auto", "tpu", jnp.bfloat16, False, "splash"),
    ("auto", "tpu", jnp.float32, False, "splash"),
    ("auto", "tpu", jnp.bfloat16, True, "xla"),     # shared prompts' or left padding's mask
    ("auto", "gpu", jnp.bfloat16, False, "cudnn"),
    ("auto", "gpu", jnp.float32, False, "xla"),
    ("auto", "cpu", jnp.bfloat16, False, "blocked"),
    ("auto", "cpu", jnp.float32, True, "blocked"),
    ("splash", "tpu", jnp.bfloat16, False, "splash"),
    ("splash", "tpu", jnp.bfloat16, True, "xla"),
    ("splash", "cpu", jnp.float32, False, "xla"),
    ("splash", "gpu", jnp.bfloat16, False, "xla"),
    ("chunked", "tpu", jnp.bfloat16, False, "chunked"),
    ("xla", "tpu", jnp.bfloat16, False, "xla"),
])
def test_attention_per_platform(requested, backend, dtype, masked, expected):
    assert attention_impl_for(requested, backend, dtype, masked) == expected


def test_splash_off_tpu_runs_xla_attention_and_says_so(caplog):
    arch = tiny_config("random").model.arch.to_dict()
    cfgs = {impl: QwenConfig(**arch, attention_impl=impl) for impl in ("splash", "xla")}
    model_lib._note_once.cache_clear()  # said once per process: maybe already, by another test
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 512, (2, 24)), jnp.int32)
    with caplog.at_level(logging.WARNING):
        out = {impl: Qwen(c, rngs=nnx.Rngs(0))(tokens) for impl, c in cfgs.items()}
    np.testing.assert_array_equal(out["splash"], out["xla"])
    assert any("model.attention_impl=splash: a cpu backend; using XLA's attention instead"
               in r.getMessage() for r in caplog.records)


def test_dry_run_plans_splash_as_chunked_attention():
    cfg = load_config(tiny_config())
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention_impl="splash"))
    planned, note = planned_config(cfg, fake_devices=4)
    assert planned.model.attention_impl == "chunked" and "flash" in note
