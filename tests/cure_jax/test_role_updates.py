"""learner.role_updates: "separate" takes the codes' optimizer steps, then the tests', each
normalised over its own rows (the CURE reference's two updates per RL step); "joint" is one
pass over all rows."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from cure_jax import sharding
from cure_jax.config import ConfigError, LearnerConfig, load_config
from cure_jax.learner import make_learner
from rollout.contract.schema import KIND_CODE, KIND_TEST
from tests.cure_jax.test_learner import MODEL, learn_synthetic, random_batch
from tests.helpers.cure_runs import tiny_config

CFG = LearnerConfig(lr=1e-3, kl_coef=0.05, tis_cap=2.0, length_bucket=8, logprob_chunk=8,
                    role_updates="separate")


def _mixed_batch():
    b = random_batch(n=16, seed=4)
    kind = np.where(np.arange(16) % 8 < 4, KIND_CODE, KIND_TEST).astype(np.int8)
    return dataclasses.replace(b, kind=kind)


def test_separate_updates_codes_then_tests_each_over_its_own_rows():
    mesh = sharding.make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    learner = make_learner(MODEL, CFG, mesh, seed=0)
    state = learner.init_state()
    ref = learner.reference_params(state.params)
    batch = _mixed_batch()
    calls = []
    inner = learner._minibatch_grads

    def recording(params, b, rows, ids, extra, keys, accum):
        out = inner(params, b, rows, ids, extra, keys, accum)
        calls.append((np.sort(ids), jax.tree.map(np.asarray, jax.device_get(out[0])), out[2]))
        return out
    learner._minibatch_grads = recording
    state, metrics = learner.update(state, batch, ref)
    assert int(state.step) == 2  # two optimizer steps in one RL step
    codes, tests = np.nonzero(batch.kind == KIND_CODE)[0], np.nonzero(batch.kind == KIND_TEST)[0]
    np.testing.assert_array_equal(calls[0][0], codes)
    np.testing.assert_array_equal(calls[1][0], tests)
    assert calls[0][2] == batch.response_len[codes].sum()  # the token-mean of the codes alone
    assert calls[1][2] == batch.response_len[tests].sum()
    # The codes' step is the gradient of the code rows' loss alone, at the initial params.
    fresh = make_learner(MODEL, dataclasses.replace(CFG, role_updates="joint"), mesh, seed=0)
    init = fresh.init_state()
    g_codes, _ = fresh.gradients(init.params, batch.select(codes), fresh.reference_params(init.params))
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g_codes))
    for a, b in zip(jax.tree.leaves(calls[0][1]), jax.tree.leaves(g_codes)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
    # The tests' step starts from the updated params but keeps the pre-update old log-probs.
    assert metrics["abs_log_ratio"] > 0


def test_joint_is_one_pass_and_a_missing_role_is_skipped():
    mesh = sharding.make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    batch = _mixed_batch()
    joint = make_learner(MODEL, dataclasses.replace(CFG, role_updates="joint"), mesh, seed=0)
    s = joint.init_state()
    s, _ = joint.update(s, batch, joint.reference_params(s.params))
    assert int(s.step) == 1
    sep = make_learner(MODEL, CFG, mesh, seed=0)
    s = sep.init_state()
    codes_only = batch.select(np.nonzero(batch.kind == KIND_CODE)[0])
    s, _ = sep.update(s, codes_only, sep.reference_params(s.params))
    assert int(s.step) == 1


def test_role_updates_is_checked_at_the_door():
    c = tiny_config()
    with c.unlocked():
        c.learner.role_updates = "alternate"
    with pytest.raises(ConfigError, match=r"config\.learner\.role_updates: must be one of"):
        load_config(c)


@pytest.mark.slow
def test_separate_updates_learn_the_synthetic_reward():
    """Half the synthetic groups are codes, half tests: both roles' steps raise the reward."""
    cfg = dataclasses.replace(CFG, lr=3e-3, clip_high=0.28, kl_coef=0.01, micro_batch_size=8,
                              logprob_chunk=16)
    state, rewards = learn_synthetic(cfg, 25)
    assert int(state.step) == 50
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > 0.4 and last > first + 0.3, rewards
