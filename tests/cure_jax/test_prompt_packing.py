"""Shared prompts in the learner (`learner.share_prompts`, cure_jax.prompt_packing): the packed
layout reproduces every row, the model's hidden states and the learner's gradients and updates
equal the one-row-per-response ones, on one device and on a sharded mesh, and every process
plans the same packed shapes."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cure_jax import prompt_packing, row_plan, sharding
from cure_jax.experience import ExperienceBatch
from cure_jax.learner import make_learner
from cure_jax.models.qwen import Qwen
from tests.cure_jax.test_learner import FULL, MODEL, random_batch


def shared_batch(groups: int = 4, k: int = 4, seed: int = 0) -> ExperienceBatch:
    """random_batch with k rows per prompt (each group's prompt copied to its rows)."""
    b = random_batch(n=groups * k, seed=seed)
    first = np.arange(groups * k) // k * k
    prompt = b.prompt_len[first]
    tokens = b.tokens.copy()
    for i, f in enumerate(first):
        tokens[i, :prompt[i]] = b.tokens[f, :prompt[i]]
        tokens[i, prompt[i]:prompt[i] + b.response_len[i]] = \
            b.tokens[i, prompt[i]:prompt[i] + b.response_len[i]]
        tokens[i, prompt[i] + b.response_len[i]:] = 0
    mask = np.arange(b.length)[None] >= prompt[:, None]
    mask &= np.arange(b.length)[None] < (prompt + b.response_len)[:, None]
    return dataclasses.replace(b, tokens=tokens, prompt_len=prompt,
                               rollout_logprobs=np.where(mask, b.rollout_logprobs, 0.0)
                               .astype(np.float32))


def _pack(b: ExperienceBatch, blocks: int, pad_rows: int = 0):
    group = prompt_packing.prompt_groups(b.tokens, b.prompt_len)
    b = b.pad_rows_to(b.num_rows + pad_rows)
    group = np.concatenate([group, np.full(pad_rows, -1)])
    per = b.num_rows // blocks
    shapes = [prompt_packing.block_shape(group[i:i + per], b.prompt_len[i:i + per],
                                         b.response_len[i:i + per])
              for i in range(0, b.num_rows, per)]
    seqs, length = max(s for s, _ in shapes), max(n for _, n in shapes)
    return b, prompt_packing.pack(b.tokens, b.prompt_len, b.response_len, group, blocks,
                                  seqs, length + 3), seqs, length + 3


def test_prompt_groups_follow_prompt_content():
    b = shared_batch(groups=3, k=2)
    assert prompt_packing.prompt_groups(b.tokens, b.prompt_len).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("blocks", [1, 2])
def test_packed_layout_reproduces_every_row(blocks):
    b, p, seqs, length = _pack(shared_batch(), blocks, pad_rows=2)
    per = b.num_rows // blocks
    assert p.tokens.shape == (blocks * seqs, length) and p.index.shape == b.tokens.shape
    for r in range(b.num_rows):
        n = int(b.prompt_len[r] + b.response_len[r])
        block = r // per
        flat = slice(block * seqs, (block + 1) * seqs)
        at = p.index[r, :n]
        # the row's tokens, at its own positions, come back through the index
        np.testing.assert_array_equal(p.tokens[flat].ravel()[at], b.tokens[r, :n])
        np.testing.assert_array_equal(p.positions[flat].ravel()[at], np.arange(n))
        seg = p.segments[flat].ravel()[at]
        assert (seg[:b.prompt_len[r]] == 0).all()
        assert len(set(seg[b.prompt_len[r]:].tolist())) <= 1 and (seg[b.prompt_len[r]:] > 0).all()
        assert (p.index[r, n:] == 0).all()
    # each prompt appears once per block: fewer tokens than the rows
    assert (p.segments >= 0).sum() < (b.prompt_len + b.response_len).sum()


def test_pack_refuses_a_shape_that_does_not_hold_the_rows():
    b, _, seqs, length = _pack(shared_batch(), 1)
    group = prompt_packing.prompt_groups(b.tokens, b.prompt_len)
    with pytest.raises(ValueError, match="device block 0 has 4 prompts, planned for 3"):
        prompt_packing.pack(b.tokens, b.prompt_len, b.response_len, group, 1, seqs - 1, length)
    with pytest.raises(ValueError, match="more than 8 tokens"):
        prompt_packing.pack(b.tokens, b.prompt_len, b.response_len, group, 1, seqs, 8)


def test_packed_hidden_states_equal_the_rows():
    b, p, _, _ = _pack(shared_batch(), 2)
    model = Qwen(MODEL, rngs=nnx.Rngs(0))
    rows = model(jnp.asarray(b.tokens))
    packed = {"packed_tokens": p.tokens, "packed_positions": p.positions,
              "packed_segments": p.segments, "unpack_index": p.index}
    got = prompt_packing.unpacked_hidden(model, {k: jnp.asarray(v) for k, v in packed.items()}, 2)
    valid = np.arange(b.length)[None] < (b.prompt_len + b.response_len)[:, None]
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(rows)[valid], atol=2e-5)
    # without the segment mask responses would see each other: the test can tell
    leaky = model(jnp.asarray(p.tokens), positions=jnp.asarray(p.positions))
    leaky = np.asarray(jax.vmap(lambda h, i: h[i])(
        leaky.reshape(2, -1, leaky.shape[-1]), jnp.asarray(p.index).reshape(2, -1)))
    assert np.abs(leaky.reshape(np.asarray(rows).shape)[valid] - np.asarray(rows)[valid]).max() > 1e-3


def test_packed_hidden_states_at_selected_positions():
    """The head's response window: an index of chosen row positions gathers their hidden states
    straight from the packed sequences."""
    b, p, _, _ = _pack(shared_batch(), 2)
    model = Qwen(MODEL, rngs=nnx.Rngs(0))
    rows = np.asarray(model(jnp.asarray(b.tokens)))
    at = row_plan.response_positions(b.prompt_len, b.response_len, 8, b.length)
    src = np.clip(at - 1, 0, b.length - 1)
    packed = {"packed_tokens": p.tokens, "packed_positions": p.positions,
              "packed_segments": p.segments, "unpack_index": p.index}
    got = prompt_packing.unpacked_hidden(model, {k: jnp.asarray(v) for k, v in packed.items()}, 2,
                                         index=jnp.asarray(np.take_along_axis(p.index, src, 1)))
    used = at < b.length
    assert got.shape == (b.num_rows, 8, rows.shape[-1]) and used.sum() == \
        np.minimum(b.response_len, 8).sum()
    want = np.take_along_axis(rows, src[..., None], 1)
    np.testing.assert_allclose(np.asarray(got)[used], want[used], atol=2e-5)


def test_segments_refuse_the_cudnn_attention():
    model = Qwen(dataclasses.replace(MODEL, attention_impl="cudnn"), rngs=nnx.Rngs(0))
    tokens = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="segment_ids .* need an attention that takes a mask"):
        model(tokens, positions=jnp.zeros((1, 4), jnp.int32), segment_ids=jnp.zeros((1, 4), jnp.int32))


def _grads(mesh, batch, share):
    cfg = dataclasses.replace(FULL, ppo_epochs=1, minibatches=1, micro_batch_size=8,
                              length_bucket=64, share_prompts=share)  # one shape: one compile
    learner = make_learner(MODEL, cfg, mesh, seed=0)
    state = learner.init_state()
    ref = learner.reference_params(jax.tree.map(lambda x: x * 1.05, state.params))  # KL > 0
    return learner.gradients(state.params, batch, ref)


@pytest.mark.parametrize("axes", [{"data": 1, "fsdp": 1, "tp": 1},
                                  {"data": 2, "fsdp": 2, "tp": 2}])
def test_shared_prompt_gradients_equal_one_row_each(axes):
    """The gradient and metrics of a batch (4 prompts x 4 responses, micro-batches of 8 rows)
    are those of the unpacked rows: on one device, and with 4 data-parallel blocks x 2-way tp."""
    n = axes["data"] * axes["fsdp"] * axes["tp"]
    mesh = sharding.make_mesh(**axes, devices=jax.devices()[:n])
    batch = shared_batch()
    g0, m0 = _grads(mesh, batch, False)
    g1, m1 = _grads(mesh, batch, True)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g0))
    for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(g1)[0],
                                 jax.tree_util.tree_flatten_with_path(g0)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
    assert m0["kl"] > 0
    for k in ("pg_loss", "kl", "entropy", "tis_weight"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_shared_prompt_updates_equal_one_row_each():
    """Two epochs x two minibatches (old log-probs recomputed, reference log-probs, packed
    micro-batches of 4 rows): the parameters after the update match."""
    mesh = sharding.make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    batch = shared_batch(seed=3)
    out = []
    for share in (False, True):
        cfg = dataclasses.replace(FULL, length_bucket=64, share_prompts=share)
        learner = make_learner(MODEL, cfg, mesh, seed=0)
        state = learner.init_state()
        ref = learner.reference_params(state.params)
        state, metrics = learner.update(state, batch, ref)
        out.append((jax.device_get(state.params), metrics))
    for a, b in zip(jax.tree.leaves(out[1][0]), jax.tree.leaves(out[0][0])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)  # 1% of an update (lr 1e-3)
    np.testing.assert_allclose(out[1][1]["pg_loss"], out[0][1]["pg_loss"], rtol=1e-4, atol=1e-7)


def test_every_process_plans_the_same_packed_shapes():
    """Two processes with different rows: the same micro-batch shapes, packed ones included,
    and each process's own rows fit them."""
    batches = [shared_batch(groups=3, k=4, seed=0), shared_batch(groups=2, k=4, seed=5)]
    groups = [prompt_packing.prompt_groups(b.tokens, b.prompt_len) for b in batches]

    def global_rows(pi):
        return row_plan.GlobalRows(
            prompt_len=np.concatenate([b.prompt_len for b in batches]).astype(np.int64),
            response_len=np.concatenate([b.response_len for b in batches]).astype(np.int64),
            kind=np.zeros(20, np.int64), group=np.concatenate(groups),
            counts=np.array([12, 8]), process_index=pi)
    plans = [row_plan.plan(global_rows(pi), np.random.default_rng(0).permutation(20), 8, 2, 8,
                           share_prompts=True) for pi in (0, 1)]
    shape = [[(m.rows_per_process, m.length, m.packed_seqs, m.packed_len) for m in p] for p in plans]
    assert shape[0] == shape[1] and all(s[2] >= 1 and s[3] >= 8 for s in shape[0])
    for pi, p in enumerate(plans):
        for m in p:
            sub = batches[pi].select(m.local_rows).pad_rows_to(m.rows_per_process)
            group = np.full(m.rows_per_process, -1)
            group[:len(m.local_rows)] = groups[pi][m.local_rows]
            prompt_packing.pack(sub.tokens, sub.prompt_len, sub.response_len, group, 2,
                                m.packed_seqs, m.packed_len)  # raises when it does not fit


def test_packed_plans_save_tokens_with_few_shapes():
    """The tiny default's step (16 prompts of ~210 tokens x 8 responses of 25-75, micro-batches
    of 32 rows, bucket 32): the shared-prompt plans run on far fewer tokens than the rows (the
    whole batch: log-probs; random halves: the two minibatches), in a handful of shapes over
    many steps (each new shape is a compile)."""
    shapes = set()
    tokens = {"batch": [0, 0], "halves": [0, 0]}  # shared, rows
    for seed in range(20):
        rng = np.random.default_rng(seed)
        g = row_plan.GlobalRows(prompt_len=(210 + rng.integers(-25, 26, 16)).repeat(8),
                                response_len=rng.integers(25, 75, 128),
                                kind=np.zeros(128, np.int64), group=np.arange(128) // 8,
                                counts=np.array([128]), process_index=0)
        for name, ids in [("batch", np.arange(128)),
                          *(("halves", h) for h in np.array_split(rng.permutation(128), 2))]:
            for m in row_plan.plan(g, ids, 32, 1, 32, share_prompts=True):
                shapes.add((m.packed_seqs, m.packed_len))
                longest = g.response_len.max()  # one window for the whole step
                assert longest <= m.window < 2 * longest and m.window in (32, 64, 128)
                tokens[name][0] += m.packed_seqs * m.packed_len
            for m in row_plan.plan(g, ids, 32, 1, 32):
                tokens[name][1] += m.rows_per_process * m.length
    assert tokens["batch"][0] < 0.45 * tokens["batch"][1], tokens
    assert tokens["halves"][0] < 0.65 * tokens["halves"][1], tokens
    assert len(shapes) <= 8, shapes
