"""Losses against slow, loop-based numpy references; accumulation exactness for every mode."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import losses

jax.config.update("jax_enable_x64", False)

B, L = 6, 9


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(1.0, (B, L)).astype(np.float32)
    old = (logp + rng.normal(0, 0.4, (B, L))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.5, (B, L))).astype(np.float32)
    roll = (old + rng.normal(0, 0.3, (B, L))).astype(np.float32)
    adv = rng.normal(0, 1.0, (B,)).astype(np.float32)
    ent = rng.uniform(0, 3, (B, L)).astype(np.float32)
    mask = np.zeros((B, L), np.float32)
    for i in range(B):
        start = rng.integers(1, 4)
        end = rng.integers(start, L + 1)
        mask[i, start:end] = 1.0
    mask[B - 1] = 0.0  # a row without response tokens must not count as a sequence
    return {"logp": logp, "old_logp": old, "ref_logp": ref, "rollout_logp": roll, "advantage": adv,
                "entropy": ent, "mask": mask}


# ---------------------------------------------------------------- numpy references (loops)
def np_agg(x, mask, mode, c=None):
    if mode == "token-mean":
        num = sum(x[i, t] for i in range(x.shape[0]) for t in range(x.shape[1]) if mask[i, t])
        return num / max(1.0, mask.sum())
    rows = [i for i in range(x.shape[0]) if mask[i].sum() > 0]
    total = 0.0
    for i in rows:
        s = sum(x[i, t] for t in range(x.shape[1]) if mask[i, t])
        total += s / mask[i].sum() if mode == "seq-mean-token-mean" else s / c
    return total / max(1, len(rows))


def np_ppo(logp, old, adv, lo, hi, dual=None, clamp=20.0):
    out = np.zeros_like(logp, dtype=np.float64)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            r = math.exp(min(max(float(logp[i, t]) - float(old[i, t]), -clamp), clamp))
            a = float(adv[i])
            v = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
            if dual is not None and a < 0:
                v = min(v, -a * dual)
            out[i, t] = v
    return out


def np_kl(logp, ref, est):
    out = np.zeros_like(logp, dtype=np.float64)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            r = float(ref[i, t]) - float(logp[i, t])
            out[i, t] = {"k1": -r, "k2": 0.5 * r * r, "k3": math.exp(r) - r - 1}[est]
    return out


MODES = list(losses.AGG_MODES)


@pytest.mark.parametrize("mode", MODES)
def test_aggregation_matches_numpy(mode):
    d = _inputs(1)
    x = np.random.default_rng(2).normal(size=(B, L)).astype(np.float32)
    got = losses.aggregate(jnp.asarray(x), jnp.asarray(d["mask"]), mode, norm_constant=7.0)
    np.testing.assert_allclose(float(got), np_agg(x, d["mask"], mode, 7.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lo,hi,dual", [(0.2, 0.2, None), (0.2, 0.28, None), (0.1, 0.3, 3.0)])
def test_ppo_clip_matches_numpy(lo, hi, dual):
    d = _inputs(3)
    terms = losses.ppo_clip_loss(jnp.asarray(d["logp"]), jnp.asarray(d["old_logp"]),
                                 jnp.asarray(d["advantage"]), clip_low=lo, clip_high=hi, dual_clip=dual)
    ref = np_ppo(d["logp"], d["old_logp"], d["advantage"], lo, hi, dual)
    np.testing.assert_allclose(np.asarray(terms.loss), ref, rtol=1e-5, atol=1e-6)
    # Clipping must be active somewhere in these inputs, or the test proves nothing.
    assert float(terms.clipped.sum()) > 0
    if dual is not None:
        big = _inputs(3)
        big["logp"] = big["old_logp"] + 3.0   # ratio e^3 > dual clip 3
        t2 = losses.ppo_clip_loss(jnp.asarray(big["logp"]), jnp.asarray(big["old_logp"]),
                                  jnp.asarray(big["advantage"]), clip_low=lo, clip_high=hi, dual_clip=dual)
        assert float(t2.dual_clipped.sum()) > 0
        np.testing.assert_allclose(np.asarray(t2.loss),
                                   np_ppo(big["logp"], big["old_logp"], big["advantage"], lo, hi, dual),
                                   rtol=1e-5, atol=1e-5)


def test_log_ratio_clamp():
    logp = jnp.array([[0.0, 0.0]])
    old = jnp.array([[-100.0, 100.0]])
    t = losses.ppo_clip_loss(logp, old, jnp.array([1.0]), log_ratio_clamp=5.0)
    np.testing.assert_allclose(np.asarray(t.log_ratio), [[5.0, -5.0]])
    assert np.all(np.isfinite(np.asarray(t.loss)))


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_estimators_match_numpy(est):
    d = _inputs(4)
    got = losses.kl_penalty(jnp.asarray(d["logp"]), jnp.asarray(d["ref_logp"]), est)
    np.testing.assert_allclose(np.asarray(got), np_kl(d["logp"], d["ref_logp"], est), rtol=1e-5, atol=1e-6)
    if est == "k3":
        assert float(got.min()) >= 0.0


def test_kl_estimators_unbiased_on_categorical():
    """k1 and k3 average to the exact KL(p||q) when y ~ p; k2 does not in general."""
    p = np.array([0.5, 0.3, 0.2]); q = np.array([0.2, 0.2, 0.6])
    exact = float(np.sum(p * np.log(p / q)))
    lp, lq = jnp.log(jnp.asarray(p))[None], jnp.log(jnp.asarray(q))[None]
    for est in ("k1", "k3"):
        vals = np.asarray(losses.kl_penalty(lp, lq, est))[0]
        np.testing.assert_allclose(float(np.sum(p * vals)), exact, rtol=1e-5)


def test_truncated_is_weight():
    old = jnp.array([[0.0, 0.0, -1.0]]); roll = jnp.array([[0.0, -5.0, 0.0]])
    w = losses.truncated_is_weight(old, roll, cap=2.0)
    np.testing.assert_allclose(np.asarray(w), [[1.0, 2.0, math.exp(-1.0)]], rtol=1e-6)
    g = jax.grad(lambda o: losses.truncated_is_weight(o, roll, 2.0).sum())(old)
    assert float(jnp.abs(g).sum()) == 0.0  # a weight, not a gradient path


@pytest.mark.parametrize("mode", MODES)
def test_combined_loss_matches_numpy(mode):
    d = _inputs(5)
    cfg = losses.PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.05,
                                  kl_estimator="k3", entropy_coef=0.01, tis_cap=2.0,
                                  agg_mode=mode, norm_constant=11.0)
    got, metrics = losses.policy_loss(cfg, **{k: jnp.asarray(v) for k, v in d.items()})
    pg = np_ppo(d["logp"], d["old_logp"], d["advantage"], 0.2, 0.28, 3.0)
    w = np.minimum(np.exp(d["old_logp"].astype(np.float64) - d["rollout_logp"]), 2.0)
    per_tok = pg * w + 0.05 * np_kl(d["logp"], d["ref_logp"], "k3") - 0.01 * d["entropy"]
    np.testing.assert_allclose(float(got), np_agg(per_tok, d["mask"], mode, 11.0), rtol=1e-5, atol=1e-6)
    m = d["mask"]
    np.testing.assert_allclose(float(metrics["kl"]), (np_kl(d["logp"], d["ref_logp"], "k3") * m).sum() / m.sum(),
                               rtol=1e-5)
    np.testing.assert_allclose(float(metrics["entropy"]), (d["entropy"] * m).sum() / m.sum(), rtol=1e-5)


def test_cross_entropy_matches_numpy():
    d = _inputs(6)
    got = losses.cross_entropy_loss(jnp.asarray(d["logp"]), jnp.asarray(d["mask"]), "token-mean")
    np.testing.assert_allclose(float(got), np_agg(-d["logp"], d["mask"], "token-mean"), rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [2, 3, 6])
def test_accumulation_equals_big_batch(mode, k):
    """sum over k micro-batches of numerator/global-denominator == one big batch (value and grad)."""
    d = _inputs(7)
    cfg = losses.PolicyLossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.1, entropy_coef=0.01,
                                  tis_cap=2.0, agg_mode=mode, norm_constant=9.0)
    arrays = {k_: jnp.asarray(v) for k_, v in d.items()}

    def big(logp):
        return losses.policy_loss(cfg, **{**arrays, "logp": logp})[0]

    denom = losses.aggregate_denominator(arrays["mask"], mode)
    rows = np.array_split(np.arange(B), k)

    def accumulated(logp):
        total = 0.0
        for r in rows:
            part = {k_: v[r] for k_, v in arrays.items()}
            part["logp"] = logp[r]
            total = total + losses.policy_loss_numerator(cfg, **part)[0] / denom
        return total

    v_big, g_big = jax.value_and_grad(big)(arrays["logp"])
    v_acc, g_acc = jax.value_and_grad(accumulated)(arrays["logp"])
    np.testing.assert_allclose(float(v_acc), float(v_big), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_acc), np.asarray(g_big), rtol=1e-6, atol=1e-8)
    assert float(jnp.abs(g_big).sum()) > 0


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="agg_mode"):
        losses.PolicyLossConfig(agg_mode="mean")
    with pytest.raises(ValueError, match="kl_estimator"):
        losses.PolicyLossConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="dual_clip"):
        losses.PolicyLossConfig(dual_clip=0.5)
    with pytest.raises(ValueError, match="norm_constant"):
        losses.PolicyLossConfig(agg_mode="seq-mean-token-sum-norm")
