"""The Flax Qwen2/Qwen3 decoder equals transformers' in float32, with padding; config parsing."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cure_jax.hf_io import load_model
from cure_jax.models.qwen import Qwen, QwenConfig
from tests.helpers.tiny_models import PRESETS, make_tiny_hf_dir

VARIANTS = [("qwen2", False), ("qwen2", True), ("qwen3", False), ("qwen3", True)]


@nnx.jit
def _forward(model, tokens, positions, mask):
    return model(tokens, positions=positions, attention_mask=mask)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {(fam, tie): make_tiny_hf_dir(root, fam, tie=tie, seed=3, tokenizer=False)
            for fam, tie in VARIANTS}


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 512, (4, 16))
    mask = np.ones((4, 16), np.int64)
    mask[1, 10:] = 0          # right padding
    mask[2, :6] = 0           # left padding
    mask[3, 3:] = 0           # mostly padding
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    return tokens, mask, positions


def _hf_logits(hf_dir, tokens, mask, positions):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions))
    return out.logits.numpy()


@pytest.mark.parametrize("family,tie", VARIANTS)
def test_logits_match_transformers_fp32(hf_dirs, family, tie):
    hf_dir = hf_dirs[(family, tie)]
    tokens, mask, positions = _batch()
    ref = _hf_logits(hf_dir, tokens, mask, positions)
    model = load_model(hf_dir)
    assert model.cfg.family == family and model.cfg.tie_word_embeddings == tie
    if family == "qwen3":
        assert model.cfg.head_dim * model.cfg.num_attention_heads != model.cfg.hidden_size
    hidden = jax.jit(lambda m, t, a: m(t, attention_mask=a))(model, jnp.asarray(tokens),
                                                           jnp.asarray(mask))
    ours = np.asarray(model.logits(hidden))
    valid = mask.astype(bool)
    err = np.abs(ours - ref)[valid].max()
    assert err <= 1e-4, f"max abs logits error {err}"
    assert np.abs(ref).max() > 0.5  # logits are not trivially tiny


def test_default_positions_follow_padding(hf_dirs):
    """Without positions, left-padded rows get positions counted from their first real token."""
    model = load_model(hf_dirs[("qwen2", False)])
    tokens, mask, positions = _batch()
    a = _forward(model, jnp.asarray(tokens), None, jnp.asarray(mask))
    b = _forward(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_right_padding_needs_no_mask(hf_dirs):
    """Causality already hides right padding: real-token outputs equal with and without the mask."""
    model = load_model(hf_dirs[("qwen3", True)])
    tokens, _, _ = _batch()
    mask = np.ones_like(tokens)
    mask[0, 9:] = 0
    a = np.asarray(_forward(model, jnp.asarray(tokens), None, jnp.asarray(mask)))
    b = np.asarray(_forward(model, jnp.asarray(tokens), None, None))
    np.testing.assert_allclose(a[0, :9], b[0, :9], atol=1e-6)


def test_bf16_compute_close_to_fp32(hf_dirs):
    hf_dir = hf_dirs[("qwen2", False)]
    tokens, mask, _ = _batch()
    f32 = load_model(hf_dir)
    bf16 = load_model(hf_dir, dtype=jnp.bfloat16)
    assert bf16.embed_tokens[...].dtype == jnp.float32  # fp32 master weights
    h = _forward(bf16, jnp.asarray(tokens), None, jnp.asarray(mask))
    assert h.dtype == jnp.bfloat16
    a = np.asarray(f32.logits(_forward(f32, jnp.asarray(tokens), None, jnp.asarray(mask))))
    b = np.asarray(bf16.logits(h))
    valid = mask.astype(bool)
    assert np.abs(a - b)[valid].max() < 0.15
    assert np.abs(a - b)[valid].max() > 0  # really computed in bf16


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_keeps_gradients(policy):
    cfg = QwenConfig.preset("tiny-qwen2", num_hidden_layers=1)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 512, (2, 8)))

    def loss(model):
        return jnp.mean(model.logits(model(tokens)) ** 2)

    base = Qwen(cfg, rngs=nnx.Rngs(0))
    remat = Qwen(cfg.replace(remat_policy=policy), rngs=nnx.Rngs(0))
    g0 = nnx.jit(nnx.grad(loss))(base)
    g1 = nnx.jit(nnx.grad(loss))(remat)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_attention_impl_is_selectable():
    cfg = QwenConfig.preset("tiny-qwen2", attention_impl="xla")
    model = Qwen(cfg, rngs=nnx.Rngs(0))
    assert _forward(model, jnp.zeros((1, 4), jnp.int32), None, None).shape == (1, 4, cfg.hidden_size)
    with pytest.raises(ValueError, match="attention_impl"):
        QwenConfig.preset("tiny-qwen2", attention_impl="flash")


@pytest.mark.parametrize("name,params_b,family,tie", [
    ("qwen2.5-7b-instruct", 7.62, "qwen2", False),
    ("qwen2.5-14b-instruct", 14.77, "qwen2", False),
    ("qwen3-4b", 4.02, "qwen3", True),
])
def test_presets_have_published_shapes(name, params_b, family, tie):
    cfg = QwenConfig.preset(name)
    assert cfg.family == family and cfg.tie_word_embeddings == tie
    assert cfg.head_dim == 128 and cfg.rope_theta == 1e6
    assert abs(cfg.num_params() / 1e9 - params_b) < 0.01
    # the shapes build abstractly (no memory) and count the same parameters
    abstract = nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0)))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract)))
    assert n == cfg.num_params()


def test_config_errors_name_the_field(tmp_path):
    good = json.loads((PRESETS / "tiny-qwen2.json").read_text())
    with pytest.raises(ValueError, match="unknown architecture"):
        QwenConfig.from_hf_dict({**good, "architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    bad = dict(good)
    del bad["hidden_size"]
    with pytest.raises(ValueError, match="hidden_size"):
        QwenConfig.from_hf_dict(bad)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        QwenConfig.from_hf_dict({**good, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="rope_type"):
        QwenConfig.from_hf_dict({**good, "rope_scaling": {"type": "yarn", "factor": 4.0}})
    with pytest.raises(FileNotFoundError, match="config.json"):
        QwenConfig.from_hf_dir(tmp_path)
    with pytest.raises(ValueError, match="unknown model preset"):
        QwenConfig.preset("gpt-5")


def test_hf_config_round_trip():
    for name in ("qwen2.5-7b-instruct", "qwen3-4b", "tiny-qwen3"):
        cfg = QwenConfig.preset(name)
        assert QwenConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def _saved_residuals(cfg: QwenConfig) -> list[str]:
    import contextlib
    import io

    from jax.ad_checkpoint import print_saved_residuals

    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))

    def loss(st, tokens):
        return jnp.mean(nnx.merge(graphdef, st)(tokens) ** 2)

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_saved_residuals(loss, state, jnp.zeros((2, 64), jnp.int32))
    # activations of the batch: [2,64,...], or [3,2,64,...] stacked by the scan over layers
    return [line for line in buf.getvalue().splitlines() if "[2,64" in line or "[3,2,64" in line]


@pytest.mark.parametrize("scan", [False, True])
def test_remat_policy_changes_what_the_backward_pass_keeps(scan):
    cfg = QwenConfig.preset("tiny-qwen2", num_hidden_layers=3, scan_layers=scan)
    none = _saved_residuals(cfg)
    full = _saved_residuals(cfg.replace(remat_policy="full"))
    dots = _saved_residuals(cfg.replace(remat_policy="dots_saveable"))
    # full remat keeps little more than each layer's input; dots_saveable also keeps matmul outputs
    assert len(full) < len(dots) < len(none), (len(full), len(dots), len(none))
    assert not any("apply_rope" in line for line in full)


@pytest.mark.parametrize("policy", ["none", "full"])
def test_scanned_layers_equal_unrolled_ones(policy):
    """The scan over layers is the same model: same parameter tree, same loss and gradients."""
    cfg = QwenConfig.preset("tiny-qwen2", num_hidden_layers=3, remat_policy=policy)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 512, (2, 12)))
    mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [7]]), jnp.int32)
    out = {}
    for scan in (False, True):
        graphdef, state = nnx.split(Qwen(cfg.replace(scan_layers=scan), rngs=nnx.Rngs(0)))

        def loss(st, graphdef=graphdef):
            model = nnx.merge(graphdef, st)
            return jnp.mean(model.logits(model(tokens, attention_mask=mask)) ** 2)
        out[scan] = (state, *jax.jit(jax.value_and_grad(loss))(state))
    assert jax.tree.structure(out[False][0]) == jax.tree.structure(out[True][0])
    np.testing.assert_allclose(float(out[True][1]), float(out[False][1]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out[False][2]), jax.tree.leaves(out[True][2])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)


def test_blocked_attention_equals_xla_attention():
    """Blocks of queries over only the keys up to the block: the same values and gradients as
    dense attention, with and without a mask, in one block and in several (the last shorter)."""
    from cure_jax.models.qwen.model import blocked_attention
    rng = np.random.default_rng(4)
    for length in (5, 37):  # min_block 8: one block; four of 10, 10, 10, 7
        q = jnp.asarray(rng.normal(size=(2, length, 4, 8)), jnp.float32)
        k, v = (jnp.asarray(rng.normal(size=(2, length, 2, 8)), jnp.float32) for _ in range(2))
        mask = jnp.asarray(rng.random((2, 1, length, length)) < 0.7) | jnp.eye(length, dtype=bool)
        for m in (None, mask):
            def full(q, k, m=m, v=v):
                return jax.nn.dot_product_attention(q, k, v, mask=m, is_causal=True, scale=0.3)

            def blocked(q, k, m=m, v=v):
                return blocked_attention(q, k, v, m, 0.3, min_block=8)
            got, want = (jax.jit(jax.value_and_grad(lambda q, k, f=f: jnp.sum(f(q, k) ** 2),
                                                    argnums=(0, 1)))(q, k)
                         for f in (blocked, full))
            np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
            for g, w in zip(got[1], want[1]):  # d/dq and d/dk of the sum of squares
                np.testing.assert_allclose(g, w, atol=2e-5)
    model = Qwen(QwenConfig.preset("tiny-qwen2", attention_impl="blocked"), rngs=nnx.Rngs(0))
    ref = Qwen(QwenConfig.preset("tiny-qwen2", attention_impl="xla"), rngs=nnx.Rngs(0))
    tokens = jnp.asarray(rng.integers(0, 512, (2, 300)))  # 3 blocks of 100
    forward = nnx.jit(lambda m, t: m(t))
    np.testing.assert_allclose(forward(model, tokens), forward(ref, tokens), atol=2e-5)


def test_chunked_attention_equals_xla_attention():
    from cure_jax.models.qwen.model import chunked_attention
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.normal(size=(2, 37, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 37, 2, 8)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.random((2, 1, 37, 37)) < 0.7) | jnp.eye(37, dtype=bool)
    for m in (None, mask):
        def full(q, m=m):
            return jax.nn.dot_product_attention(q, k, v, mask=m, is_causal=True, scale=0.3)

        def chunked(q, m=m):
            return chunked_attention(q, k, v, m, 0.3, block=8)  # 5 blocks, the last one padded
        np.testing.assert_allclose(chunked(q), full(q), atol=2e-6)
        grads = [jax.grad(lambda q, f=f: jnp.sum(f(q) ** 2))(q) for f in (full, chunked)]
        np.testing.assert_allclose(grads[1], grads[0], atol=2e-5)
    model = Qwen(QwenConfig.preset("tiny-qwen2", attention_impl="chunked"), rngs=nnx.Rngs(0))
    ref = Qwen(QwenConfig.preset("tiny-qwen2", attention_impl="xla"), rngs=nnx.Rngs(0))
    tokens = jnp.asarray(rng.integers(0, 512, (2, 300)))
    np.testing.assert_allclose(_forward(model, tokens, None, None), _forward(ref, tokens, None, None),
                               atol=2e-5)
