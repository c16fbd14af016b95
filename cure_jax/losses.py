"""Policy-gradient losses for the learner: pure functions of per-token arrays.

Conventions (all arrays share the leading shape [B, L], one row per response):
  ``logp``          log pi_theta(y_t | y_<t) under the current parameters (float32)
  ``old_logp``      log pi_old(y_t | y_<t), the policy the PPO ratio is taken against
  ``ref_logp``      log pi_ref(y_t | y_<t), the frozen reference (initial) policy
  ``rollout_logp``  log mu(y_t | y_<t), the policy that actually sampled the tokens (vLLM)
  ``advantage``     A_i, one value per response, broadcast to its tokens: shape [B]
  ``mask``          1 on the response tokens that carry loss, 0 elsewhere (prompt, padding)

Aggregation is split into a *numerator* (a sum over the rows at hand) and a *denominator*
that depends only on the mask of the whole optimizer minibatch. Gradient accumulation over
micro-batches computes the denominator once for the minibatch and sums numerator / denominator
over micro-batches, which is exactly the big-batch loss (and gradient) for every mode.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


# ----------------------------------------------------------------------------- aggregation
def aggregate_numerator(per_token: jax.Array, mask: jax.Array, mode: str,
                        norm_constant: float | None = None) -> jax.Array:
    r"""Sum part of the aggregation over the rows given (a micro-batch or the whole batch).

    With m the mask and l the per-token values:
      token-mean:               N = \sum_{i,t} m_{it} l_{it}
      seq-mean-token-mean:      N = \sum_i (\sum_t m_{it} l_{it}) / max(1, \sum_t m_{it})
      seq-mean-token-sum-norm:  N = \sum_i (\sum_t m_{it} l_{it}) / C   (C = ``norm_constant``)
    """
    mask = mask.astype(per_token.dtype)
    row_sums = jnp.sum(per_token * mask, axis=-1)
    if mode == "token-mean":
        return jnp.sum(row_sums)
    if mode == "seq-mean-token-mean":
        return jnp.sum(row_sums / jnp.maximum(jnp.sum(mask, axis=-1), 1.0))
    if mode == "seq-mean-token-sum-norm":
        if norm_constant is None or norm_constant <= 0:
            raise ValueError("seq-mean-token-sum-norm needs a positive norm_constant")
        return jnp.sum(row_sums) / norm_constant
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")


def aggregate_denominator(mask: jax.Array, mode: str) -> jax.Array:
    r"""Normaliser of the aggregation, from the mask of the *whole* minibatch.

      token-mean:      D = max(1, \sum_{i,t} m_{it})
      seq-mean-*:      D = max(1, #\{i : \sum_t m_{it} > 0\})   (rows without response tokens
                       do not count as sequences)
    """
    mask = mask.astype(jnp.float32)
    if mode == "token-mean":
        return jnp.maximum(jnp.sum(mask), 1.0)
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        return jnp.maximum(jnp.sum((jnp.sum(mask, axis=-1) > 0).astype(jnp.float32)), 1.0)
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")


def aggregate(per_token: jax.Array, mask: jax.Array, mode: str,
              norm_constant: float | None = None) -> jax.Array:
    """Full aggregation over one batch: numerator / denominator (see the two functions above)."""
    return aggregate_numerator(per_token, mask, mode, norm_constant) / aggregate_denominator(mask, mode)


# ----------------------------------------------------------------------------- PPO clip
@dataclasses.dataclass(frozen=True)
class PolicyLossTerms:
    """Per-token pieces of the clipped policy-gradient loss (all [B, L])."""
    loss: jax.Array          # per-token loss l_t
    log_ratio: jax.Array     # clamped log(pi_theta / pi_old)
    clipped: jax.Array       # 1 where the clipped branch is the active one
    dual_clipped: jax.Array  # 1 where the dual clip bound is active (A < 0 only)


def ppo_clip_loss(logp: jax.Array, old_logp: jax.Array, advantage: jax.Array, *,
                  clip_low: float = 0.2, clip_high: float = 0.2,
                  dual_clip: float | None = None,
                  log_ratio_clamp: float = 20.0) -> PolicyLossTerms:
    r"""Per-token PPO-clip loss with clip-higher, optional dual clip and log-ratio clamp.

      \rho_t   = \exp(\mathrm{clamp}(\log\pi_\theta - \log\pi_{old}, -c, c))
      l_t      = \max(-A \rho_t,\; -A\, \mathrm{clip}(\rho_t, 1-\epsilon_{low}, 1+\epsilon_{high}))
      dual:    l_t \leftarrow \min(l_t, -A\, c_{dual})  where A < 0   (c_dual > 1)

    ``advantage`` is [B] (one value per response) or already [B, L].
    """
    adv = advantage[:, None] if advantage.ndim == 1 else advantage
    log_ratio = jnp.clip(logp - old_logp, -log_ratio_clamp, log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped_branch = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(unclipped, clipped_branch)
    clipped = (clipped_branch > unclipped).astype(jnp.float32)
    dual_clipped = jnp.zeros_like(loss)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (bound < loss)
        loss = jnp.where(dual_active, bound, loss)
        dual_clipped = dual_active.astype(jnp.float32)
    return PolicyLossTerms(loss=loss, log_ratio=log_ratio, clipped=clipped,
                           dual_clipped=jnp.broadcast_to(dual_clipped, loss.shape))


# ----------------------------------------------------------------------------- KL
def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3",
               clamp: float = 20.0) -> jax.Array:
    r"""Per-token estimate of KL(\pi_\theta \| \pi_{ref}) from samples y ~ \pi_\theta.

    With r = \mathrm{clamp}(\log\pi_{ref}(y) - \log\pi_\theta(y), -c, c):
      k1 = -r                (unbiased, high variance, can be negative)
      k2 = r^2 / 2           (biased, low variance)
      k3 = e^{r} - r - 1     (unbiased, non-negative, low variance; Schulman's estimator)
    """
    r = jnp.clip(ref_logp - logp, -clamp, clamp)
    if estimator == "k1":
        return -r
    if estimator == "k2":
        return 0.5 * r * r
    if estimator == "k3":
        return jnp.exp(r) - r - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


# ----------------------------------------------------------------------------- TIS
def truncated_is_weight(old_logp: jax.Array, rollout_logp: jax.Array, cap: float) -> jax.Array:
    r"""Truncated importance weight of the learner's behaviour policy vs the rollout engine.

      w_t = \mathrm{sg}(\min(\exp(\log\pi_{old} - \log\mu), C))

    Corrects the mismatch between the policy the learner differentiates and the one that
    sampled the tokens (asynchronous staleness, bf16/kernel differences in vLLM). No gradient.
    """
    w = jnp.exp(jnp.clip(old_logp - rollout_logp, -20.0, 20.0))
    return jax.lax.stop_gradient(jnp.minimum(w, cap))


# ----------------------------------------------------------------------------- cross-entropy
def cross_entropy_loss(logp: jax.Array, mask: jax.Array, mode: str = "token-mean",
                       norm_constant: float | None = None) -> jax.Array:
    r"""Supervised cross-entropy \mathrm{agg}(-\log\pi_\theta(y_t|y_{<t}), m) (the warm start's loss)."""
    return aggregate(-logp, mask, mode, norm_constant)


# ----------------------------------------------------------------------------- combined
@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Hyper-parameters of the combined RL loss (validated at construction)."""
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    log_ratio_clamp: float = 20.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    tis_cap: float | None = None
    agg_mode: str = "token-mean"
    norm_constant: float | None = None

    def __post_init__(self):
        if self.agg_mode not in AGG_MODES:
            raise ValueError(f"agg_mode: unknown {self.agg_mode!r}; expected one of {AGG_MODES}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator: unknown {self.kl_estimator!r}; expected one of {KL_ESTIMATORS}")
        if self.clip_low < 0 or self.clip_high < 0:
            raise ValueError("clip_low/clip_high must be >= 0")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {self.dual_clip}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be > 0, got {self.tis_cap}")
        if self.agg_mode == "seq-mean-token-sum-norm" and not (self.norm_constant and self.norm_constant > 0):
            raise ValueError("norm_constant must be > 0 for agg_mode seq-mean-token-sum-norm")


# Names of the metric sums returned by policy_loss_numerator; each is a token sum of the
# masked per-token value, turned into a token mean by dividing by the minibatch token count.
METRIC_KEYS: tuple[str, ...] = ("pg_loss", "kl", "entropy", "clip_frac", "dual_clip_frac",
                                "log_ratio", "abs_log_ratio", "tis_weight")


def policy_loss_numerator(cfg: PolicyLossConfig, *, logp: jax.Array, old_logp: jax.Array,
                          advantage: jax.Array, mask: jax.Array,
                          ref_logp: jax.Array | None = None,
                          rollout_logp: jax.Array | None = None,
                          entropy: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""Numerator of the combined RL loss for some rows, plus token-sum metrics.

      l_t = w_t \cdot l^{PPO}_t + \beta\, k_t - \alpha\, H_t
      loss = \mathrm{agg}(l, m)   (numerator here; divide by ``aggregate_denominator``)

    w_t is the truncated IS weight (1 when ``tis_cap`` is None), k_t the KL estimate vs the
    reference (0 when ``kl_coef`` is 0), H_t the entropy of the current policy at t.
    Metric values are \sum_t m_t x_t; divide by \sum_t m_t for token means.
    """
    maskf = mask.astype(jnp.float32)
    terms = ppo_clip_loss(logp, old_logp, advantage, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                          dual_clip=cfg.dual_clip, log_ratio_clamp=cfg.log_ratio_clamp)
    per_token = terms.loss
    tis = jnp.ones_like(per_token)
    if cfg.tis_cap is not None:
        if rollout_logp is None:
            raise ValueError("tis_cap is set but rollout_logp was not given")
        tis = truncated_is_weight(old_logp, rollout_logp, cfg.tis_cap)
        per_token = per_token * tis
    kl = jnp.zeros_like(per_token)
    if cfg.kl_coef != 0.0 or ref_logp is not None:
        if ref_logp is None:
            raise ValueError("kl_coef is set but ref_logp was not given")
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator)
        per_token = per_token + cfg.kl_coef * kl
    ent = jnp.zeros_like(per_token) if entropy is None else entropy
    if cfg.entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef is set but entropy was not given")
        per_token = per_token - cfg.entropy_coef * entropy
    numer = aggregate_numerator(per_token, maskf, cfg.agg_mode, cfg.norm_constant)

    def tsum(x):
        return jnp.sum(jax.lax.stop_gradient(x) * maskf)
    metrics = {
        "pg_loss": tsum(terms.loss), "kl": tsum(kl), "entropy": tsum(ent),
        "clip_frac": tsum(terms.clipped), "dual_clip_frac": tsum(terms.dual_clipped),
        "log_ratio": tsum(terms.log_ratio), "abs_log_ratio": tsum(jnp.abs(terms.log_ratio)),
        "tis_weight": tsum(tis),
    }
    return numer, metrics


def policy_loss(cfg: PolicyLossConfig, **arrays: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Combined RL loss over one whole batch: numerator / denominator, and token-mean metrics."""
    numer, sums = policy_loss_numerator(cfg, **arrays)
    mask = arrays["mask"]
    denom = aggregate_denominator(mask, cfg.agg_mode)
    ntok = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
    return numer / denom, {k: v / ntok for k, v in sums.items()}
