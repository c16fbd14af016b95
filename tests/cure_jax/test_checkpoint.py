"""Orbax checkpoints: round trip (sharded), keep-N, async, corrupt/incompatible errors, signals."""
from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cure_jax import checkpoint as ckpt
from cure_jax import sharding
from tests.helpers.layouts import per_layer


def _state(seed=0, width=16):
    k = jax.random.PRNGKey(seed)
    params = {"layers": {"0": {"w": jax.random.normal(k, (8, width)), "b": jnp.zeros((width,))}},
              "emb": jax.random.normal(jax.random.fold_in(k, 1), (32, 8))}
    opt_state = optax.adamw(1e-3).init(params)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(7, jnp.int32),
            "rng": jax.random.PRNGKey(seed + 100)}


def _assert_tree_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_with_driver_state_and_sharding(tmp_path):
    mesh = sharding.make_mesh(data=1, fsdp=4, tp=2)
    st = _state()
    sh = NamedSharding(mesh, P("fsdp", "tp"))
    st["params"]["layers"]["0"]["w"] = jax.device_put(st["params"]["layers"]["0"]["w"], sh)
    c = ckpt.Checkpointer(tmp_path / "ck", keep=2, async_save=True)
    c.save(3, st, {"cursor": 12, "note": "x"})
    c.wait()
    like = jax.tree.map(lambda x: x, st)
    step, got, driver = c.restore_latest(like)
    assert step == 3 and driver == {"cursor": 12, "note": "x"}
    _assert_tree_equal(got, st)
    assert got["params"]["layers"]["0"]["w"].sharding.is_equivalent_to(sh, 2)
    # optax namedtuples keep their types
    assert type(got["opt_state"]) is type(st["opt_state"])
    c.close()
    # a fresh manager (a new process) finds and restores it too
    step, got2, _ = ckpt.Checkpointer(tmp_path / "ck").restore_latest(like)
    assert step == 3
    _assert_tree_equal(got2, st)


def test_keep_n_and_latest(tmp_path):
    c = ckpt.Checkpointer(tmp_path, keep=2, async_save=True)
    st = _state()
    for s in (1, 2, 3, 4):
        st["step"] = jnp.asarray(s, jnp.int32)
        c.save(s, st, {"cursor": s})
    c.wait()
    assert c.all_steps() == [3, 4]
    step, got, driver = c.restore_latest(st)
    assert step == 4 and int(got["step"]) == 4 and driver["cursor"] == 4
    c.close()
    assert ckpt.Checkpointer(tmp_path / "empty").restore_latest(st) is None


def test_incompatible_shape_is_clear_error(tmp_path):
    c = ckpt.Checkpointer(tmp_path, async_save=False)
    c.save(1, _state(width=16))
    c.wait()
    with pytest.raises(ckpt.CheckpointError, match=r"incompatible, array '[^']*layers/0/[wb]' has shape \((8, )?16,?\), expected \((8, )?24,?\)"):
        c.restore(1, _state(width=24))
    other = _state()
    other["params"]["extra"] = jnp.zeros(3)
    with pytest.raises(ckpt.CheckpointError, match="params/extra' is missing"):
        c.restore(1, other)
    with pytest.raises(ckpt.CheckpointError, match="no such step"):
        c.restore(5, _state())
    c.close()


def test_corrupt_checkpoint_is_clear_error(tmp_path):
    c = ckpt.Checkpointer(tmp_path, async_save=False)
    c.save(1, _state())
    c.wait()
    c.close()
    # Damage every data file of the array item.
    damaged = 0
    for root, _, files in os.walk(tmp_path / "1" / "state"):
        for f in files:
            p = os.path.join(root, f)
            if "ocdbt" in root or f.startswith("d") or "manifest" in f:
                with open(p, "wb") as fh:
                    fh.write(b"garbage")
                damaged += 1
    assert damaged > 0
    c2 = ckpt.Checkpointer(tmp_path, async_save=False)
    with pytest.raises(ckpt.CheckpointError) as ei:
        c2.restore_latest(_state())
    msg = str(ei.value)
    assert str(tmp_path / "1") in msg and "\n" not in msg


def test_stop_signal_flag():
    stop = ckpt.StopSignal().install()
    try:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
    finally:
        stop.restore()


def test_checkpoint_with_one_subtree_per_layer_restores_stacked(tmp_path):
    """A train state saved when each decoder layer had its own subtree (params and optimizer
    moments alike) restores into today's stacked layout, on the stacked shardings."""
    from flax import nnx

    from cure_jax.models.qwen import Qwen, QwenConfig

    cfg = QwenConfig.preset("tiny-qwen2", num_hidden_layers=3)
    params = nnx.to_pure_dict(nnx.state(Qwen(cfg, rngs=nnx.Rngs(4))))
    opt = optax.adamw(1e-3)
    opt_state = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)[1]
    state = {"params": params, "opt_state": opt_state, "step": jnp.asarray(5, jnp.int32)}
    older = {"params": per_layer(params, 3),
             "opt_state": ckpt.from_nested(per_layer(ckpt.to_nested(opt_state), 3),
                                           opt.init(per_layer(params, 3))),
             "step": state["step"]}
    c = ckpt.Checkpointer(tmp_path / "ck", async_save=False)
    c.save(5, older)
    c.wait()
    mesh = sharding.make_mesh(data=1, fsdp=4, tp=2)
    sh = NamedSharding(mesh, P(None, "tp", "fsdp"))  # [layers, mlp, embed]
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    like["params"]["layers"]["mlp"]["up_proj"] = jax.ShapeDtypeStruct(
        params["layers"]["mlp"]["up_proj"].shape, jnp.float32, sharding=sh)
    got, _ = c.restore(5, like)
    _assert_tree_equal(got, state)
    assert got["params"]["layers"]["mlp"]["up_proj"].sharding.is_equivalent_to(sh, 3)
    c.close()
