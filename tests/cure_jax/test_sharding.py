"""Sharded forward on 8 CPU devices equals the unsharded one; mesh and rule plumbing."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from cure_jax import sharding
from cure_jax.models.qwen import Qwen, QwenConfig


def _forward(model, tokens, mask):
    return model.logits(model(tokens, attention_mask=mask))


@pytest.fixture(scope="module")
def reference():
    cfg = QwenConfig.preset("tiny-qwen2", intermediate_size=512)
    model = Qwen(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (8, 16)), jnp.int32)
    mask = np.ones((8, 16), np.int32)
    mask[::3, 11:] = 0
    mask = jnp.asarray(mask)
    out = nnx.jit(_forward)(model, tokens, mask)
    return cfg, nnx.state(model), tokens, mask, np.asarray(out)


@pytest.mark.parametrize("data,fsdp,tp", [(2, 4, 1), (1, 8, 1), (1, 2, 4), (1, 1, 8)])
def test_sharded_forward_equals_unsharded(reference, data, fsdp, tp):
    cfg, state, tokens, mask, expected = reference
    assert len(jax.devices()) == 8
    mesh = sharding.make_mesh(data=data, fsdp=fsdp, tp=tp)
    model = Qwen(cfg, rngs=nnx.Rngs(1))
    nnx.update(model, state)
    sharding.shard_model(model, mesh)
    # parameters really are spread out: no 2-D kernel is fully replicated
    up = model.layers.mlp.up_proj[...]  # every layer's, stacked
    assert len(up.sharding.device_set) == 8
    assert up.addressable_shards[0].data.size < up.size
    tokens_s = jax.device_put(tokens, sharding.batch_sharding(mesh))
    mask_s = jax.device_put(mask, sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        out = nnx.jit(_forward)(model, tokens_s, mask_s)
    assert out.shape == expected.shape
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=1e-5)


def test_logical_rules_map_to_mesh_axes():
    mesh = sharding.make_mesh(data=2, fsdp=2, tp=2)
    assert mesh.axis_names == ("data", "fsdp", "tp")
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 256), mesh) == P("fsdp", "tp")
    assert sharding.logical_to_spec(("vocab", "embed"), (512, 64), mesh) == P("tp", "fsdp")
    # a dimension its mesh axes do not divide is replicated instead of failing
    assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 3, 32), mesh) == \
        P("fsdp", None, None)
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"), None)
    # size-1 mesh axes are dropped
    mesh1 = sharding.make_mesh(data=1, fsdp=-1, tp=1)
    assert mesh1.shape["fsdp"] == 8
    assert sharding.batch_sharding(mesh1).spec == P("fsdp", None)
    with pytest.raises(KeyError, match="'nonsense' has no sharding rule"):
        sharding.logical_to_spec(("nonsense",), (4,), mesh)


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="8 devices"):
        sharding.make_mesh(data=3, fsdp=1, tp=1)
    with pytest.raises(ValueError, match="dcn=3 must be >= 1 and divide data=2"):
        sharding.make_mesh(data=2, fsdp=2, tp=2, dcn=3)
    # one process is one granule: two slices need two processes (or TPU slices)
    with pytest.raises(ValueError, match=r"^make_mesh: dcn=2 slices do not fit these 8 devices "
                                         r"\(one process per slice\)"):
        sharding.make_mesh(data=2, fsdp=4, tp=1, dcn=2)


def test_mesh_follows_the_physical_topology():
    """The grid is mesh_utils' (on CPU: the device order), so fsdp and tp are neighbours."""
    from jax.experimental import mesh_utils
    mesh = sharding.make_mesh(data=2, fsdp=2, tp=2)
    expected = mesh_utils.create_device_mesh([2, 2, 2], jax.devices())
    assert [d.id for d in mesh.devices.flat] == [d.id for d in expected.flat]
    assert mesh.devices[0, 0, 1].id == mesh.devices[0, 0, 0].id + 1  # tp innermost


def test_mesh_config_errors_name_the_field():
    from cure_jax.config import ConfigError, load_config
    from cure_jax.train import build_learner
    from tests.helpers.cure_runs import tiny_config
    c = tiny_config("random")
    c.mesh.update({"data": 3, "dcn": 2})
    with pytest.raises(ConfigError, match=r"config\.mesh\.dcn: must divide mesh\.data = 3"):
        load_config(c)
    c.mesh.update({"data": 2, "fsdp": -1, "dcn": 2})
    with pytest.raises(ConfigError, match=r"^config\.mesh: dcn=2 slices do not fit"):
        build_learner(load_config(c))


def test_every_parameter_has_logical_axes():
    for preset in ("qwen2.5-7b-instruct", "qwen3-4b"):
        cfg = QwenConfig.preset(preset)
        abstract = nnx.eval_shape(lambda cfg=cfg: Qwen(cfg, rngs=nnx.Rngs(0)))
        for path, var in nnx.to_flat_state(nnx.state(abstract)):
            axes = var.get_metadata().get("logical_axes")
            assert axes is not None and len(axes) == len(var.get_value().shape), path


def test_7b_shardings_by_config_alone():
    """Qwen2.5-7B (28 heads, 4 KV heads) on 64 devices (fsdp 16 x tp 4), by the rules alone."""
    cfg = QwenConfig.preset("qwen2.5-7b-instruct")
    abstract = nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0)))
    devices = np.array(jax.devices() * 8).reshape(1, 16, 4)
    mesh = jax.sharding.Mesh(devices, sharding.MESH_AXES,
                             axis_types=(jax.sharding.AxisType.Auto,) * 3)
    shardings = sharding.state_shardings(nnx.state(abstract), mesh)
    flat = dict(nnx.to_flat_state(shardings))
    # the stacked layers' leading axis is never sharded
    assert flat[("layers", "self_attn", "q_proj")].get_value().spec == P(None, "tp", None, "fsdp")
    assert flat[("layers", "self_attn", "k_proj")].get_value().spec == P(None, "tp", None, "fsdp")
    assert flat[("layers", "self_attn", "o_proj")].get_value().spec == P(None, "fsdp", "tp", None)
    assert flat[("layers", "self_attn", "q_bias")].get_value().spec == P(None, "tp", None)
    assert flat[("layers", "mlp", "down_proj")].get_value().spec == P(None, "fsdp", "tp")
    assert flat[("lm_head",)].get_value().spec == P("tp", "fsdp")
    assert flat[("norm", "scale")].get_value().spec == P(None)


def test_activation_constraints_apply_only_under_a_mesh():
    f = jax.jit(lambda x: sharding.constrain(x * 2, ("batch", "length", "act_mlp")))
    x = jnp.ones((4, 8, 16))
    assert "sharding_constraint" not in f.lower(x).as_text()
    assert sharding.current_axis_size("tp") == 1
    with jax.set_mesh(sharding.make_mesh(data=1, fsdp=2, tp=4)):
        text = f.lower(x).as_text()
        assert sharding.current_axis_size("tp") == 4 and sharding.current_axis_size("fsdp") == 2
    assert 'sharding_constraint %1 <@mesh, [{"fsdp"}, {}, {"tp"}]>' in text


def test_sharded_token_logprobs_equal_unsharded(reference):
    from cure_jax.logprobs import token_logprobs

    cfg, state, tokens, mask, _ = reference
    model = Qwen(cfg, rngs=nnx.Rngs(1))
    nnx.update(model, state)

    def f(m, t, a):
        return token_logprobs(m, t, a, chunk_size=6)

    lp0, ent0 = nnx.jit(f)(model, tokens, mask)
    mesh = sharding.make_mesh(data=1, fsdp=2, tp=4)
    sharding.shard_model(model, mesh)
    assert model.embed_tokens[...].sharding.spec == P("tp", "fsdp")   # vocab split over tp
    with jax.set_mesh(mesh):
        lp1, ent1 = nnx.jit(f)(model, jax.device_put(tokens, sharding.batch_sharding(mesh)),
                               jax.device_put(mask, sharding.batch_sharding(mesh)))
    np.testing.assert_allclose(np.asarray(lp1), np.asarray(lp0), atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent1), np.asarray(ent0), atol=2e-5)
