"""Chunked token log-probs/entropies equal the naive full-logits computation, in value and gradient,
match transformers, and keep compile-time temporary memory far below one full logits array."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cure_jax.hf_io import load_model
from cure_jax.logprobs import logprobs_from_hidden, token_logprobs
from cure_jax.models.qwen import Qwen, QwenConfig
from tests.helpers.tiny_models import make_tiny_hf_dir

_jit_logprobs = nnx.jit(token_logprobs,
                        static_argnames=("chunk_size", "return_entropy", "temperature"))


def _batch(vocab=512, b=3, l=13, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, l)).astype(np.int32)
    mask = np.ones((b, l), np.int32)
    mask[1, 9:] = 0
    return jnp.asarray(tokens), jnp.asarray(mask)


def _naive(model, tokens, mask, temperature=1.0):
    logits = model.logits(model(tokens, attention_mask=mask)) / temperature
    logsm = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.take_along_axis(logsm[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logsm) * logsm, axis=-1)[:, :-1]
    z = jnp.zeros((tokens.shape[0], 1))
    lp = jnp.concatenate([z, lp], 1) * mask
    ent = jnp.concatenate([z, ent], 1) * mask
    return lp, ent


@pytest.fixture(scope="module")
def model():
    return Qwen(QwenConfig.preset("tiny-qwen3"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("chunk_size,temperature", [(1, 1.0), (5, 0.7), (12, 1.0), (256, 0.7)])
def test_chunked_equals_naive(model, chunk_size, temperature):
    tokens, mask = _batch()
    lp, ent = _jit_logprobs(model, tokens, mask, chunk_size=chunk_size, temperature=temperature)
    ref_lp, ref_ent = nnx.jit(_naive, static_argnums=3)(model, tokens, mask, temperature)
    assert lp.dtype == jnp.float32 and lp.shape == tokens.shape
    np.testing.assert_allclose(np.asarray(lp), np.asarray(ref_lp), atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent), np.asarray(ref_ent), atol=2e-5)
    assert np.all(np.asarray(lp)[:, 0] == 0) and np.all(np.asarray(lp)[1, 9:] == 0)
    assert np.asarray(lp)[0, 1:].max() < 0 and np.asarray(ent)[0, 1:].min() > 0


def test_entropy_optional(model):
    tokens, mask = _batch()
    lp, ent = _jit_logprobs(model, tokens, mask, chunk_size=4, return_entropy=False)
    assert ent is None and lp.shape == tokens.shape


def test_head_on_response_positions_only(model):
    """`at`: the head runs on each row's listed positions (L: an unused slot); the log-probs
    and entropies there, and the gradient of a loss on them, equal the every-position ones."""
    tokens, _ = _batch(b=3, l=13)
    at = jnp.asarray([[4, 5, 6, 13], [1, 2, 13, 13], [9, 10, 11, 12]], jnp.int32)
    chosen = np.zeros(tokens.shape, bool)
    for r, row in enumerate(np.asarray(at)):
        chosen[r, row[row < 13]] = True
    weights = jnp.asarray(np.random.default_rng(3).normal(size=tokens.shape) * chosen, jnp.float32)

    def loss(m, **kw):
        lp, ent = token_logprobs(m, tokens, None, chunk_size=3, **kw)
        return jnp.sum(lp * weights) + 0.1 * jnp.sum(ent * chosen), (lp, ent)

    (l1, (lp, ent)), g1 = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    (l2, (lp_at, ent_at)), g2 = nnx.jit(nnx.value_and_grad(
        lambda m: loss(m, at=at), has_aux=True))(model)
    np.testing.assert_allclose(np.asarray(lp_at)[chosen], np.asarray(lp)[chosen], atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent_at)[chosen], np.asarray(ent)[chosen], atol=2e-5)
    assert np.all(np.asarray(lp_at)[~chosen] == 0) and np.all(np.asarray(ent_at)[~chosen] == 0)
    assert np.asarray(lp_at)[chosen].max() < 0
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [5, 12])   # three chunks (rematerialised), one chunk
def test_gradient_equals_naive(model, chunk_size):
    tokens, mask = _batch()
    weights = jnp.asarray(np.random.default_rng(2).normal(size=tokens.shape), jnp.float32)

    def chunked(m):
        lp, ent = token_logprobs(m, tokens, mask, chunk_size=chunk_size)
        return jnp.sum(lp * weights) + 0.1 * jnp.sum(ent)

    def naive(m):
        lp, ent = _naive(m, tokens, mask)
        return jnp.sum(lp * weights) + 0.1 * jnp.sum(ent)

    g1 = nnx.jit(nnx.grad(chunked))(model)
    g2 = nnx.jit(nnx.grad(naive))(model)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


def test_matches_transformers_logprobs(tmp_path):
    import torch
    import transformers

    hf_dir = make_tiny_hf_dir(tmp_path, "qwen2", tie=False, seed=1, tokenizer=False)
    tokens, mask = _batch(seed=4)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(np.asarray(tokens)),
                    attention_mask=torch.tensor(np.asarray(mask))).logits
        ref = torch.log_softmax(logits, -1)[:, :-1].gather(
            -1, torch.tensor(np.asarray(tokens))[:, 1:, None].long())[..., 0].numpy()
    lp, _ = _jit_logprobs(load_model(hf_dir), tokens, mask, chunk_size=4)
    valid = np.asarray(mask)[:, 1:].astype(bool)
    assert np.abs(np.asarray(lp)[:, 1:] - ref)[valid].max() <= 1e-4


def _primitives(jaxpr) -> list[str]:
    """Names of the primitives in `jaxpr` and every jaxpr nested in it."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    out += _primitives(getattr(inner, "jaxpr", inner))
    return out


def test_only_several_chunks_are_rematerialised():
    """The head's logits are recomputed in the backward pass only when the rows span several
    chunks (so that one chunk's logits are alive at a time); with one chunk that would only
    repeat the head's matmul."""
    h, w = jnp.ones((2, 9, 8)), jnp.ones((16, 8))
    t = jnp.zeros((2, 9), jnp.int32)

    def grad_primitives(chunk_size):
        def f(h, w):
            return logprobs_from_hidden(h, w, t, chunk_size=chunk_size)[0].sum()
        return _primitives(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(h, w).jaxpr)
    several, one = grad_primitives(3), grad_primitives(8)
    assert "remat2" in several and "remat2" not in one
    assert one.count("dot_general") == 3   # the head's forward, its input and weight gradients


def test_bad_arguments():
    h = jnp.zeros((1, 4, 8))
    w = jnp.zeros((8, 16))
    t = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="chunk_size"):
        logprobs_from_hidden(h, w, t, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_hidden(h, w, t, temperature=0.0)


@pytest.mark.slow
def test_memory_well_below_full_logits():
    """batch 4 x length 4096 x vocab 151,936: compiled temporaries (forward and backward) stay far
    below one float32 [4, 4096, 151936] logits array (~10 GB), which the naive version needs."""
    cfg = QwenConfig(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=32, family="qwen2")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
    b, l = 4, 4096
    full_logits_bytes = b * l * cfg.vocab_size * 4
    toks = jax.ShapeDtypeStruct((b, l), jnp.int32)

    def forward(st, t, m):
        return token_logprobs(nnx.merge(graphdef, st), t, m, chunk_size=256)

    def loss(st, t, m):
        lp, ent = forward(st, t, m)
        return jnp.sum(lp) + 0.01 * jnp.sum(ent)

    def naive(st, t, m):
        mdl = nnx.merge(graphdef, st)
        logsm = jax.nn.log_softmax(mdl.logits(mdl(t, attention_mask=m)), axis=-1)
        return jnp.take_along_axis(logsm[:, :-1], t[:, 1:, None], axis=-1)

    def temp_bytes(f):
        return jax.jit(f).lower(state, toks, toks).compile().memory_analysis().temp_size_in_bytes

    fwd, bwd, ref = temp_bytes(forward), temp_bytes(jax.grad(loss)), temp_bytes(naive)
    assert ref >= full_logits_bytes          # the measurement does see full logits when they exist
    assert fwd < 0.2 * full_logits_bytes, fwd
    assert bwd < 0.5 * full_logits_bytes, bwd
