"""The learner's optimizer from config: optax AdamW, warm-up + constant/cosine/linear schedule,
global-norm gradient clipping. Its state lives in the train state and in every checkpoint
(the reference implementation rebuilt Adam every RL step; we do not)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cure_jax.config import LearnerConfig


def learning_rate_schedule(cfg: LearnerConfig) -> optax.Schedule:
    r"""lr(s): linear warm-up 0 -> lr over `warmup_steps`, then

      constant: lr
      cosine:   lr (r + (1 - r) (1 + \cos(\pi \min(s', D)/D)) / 2),   s' = s - warmup, D = decay_steps
      linear:   lr (1 - (1 - r) \min(s', D)/D)                      r = final_lr_ratio
    """
    if cfg.lr_schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.lr_schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, cfg.decay_steps, alpha=cfg.final_lr_ratio)
    elif cfg.lr_schedule == "linear":
        main = optax.linear_schedule(cfg.lr, cfg.lr * cfg.final_lr_ratio, cfg.decay_steps)
    else:
        raise ValueError(f"config.learner.lr_schedule: unknown {cfg.lr_schedule!r}")
    if cfg.warmup_steps <= 0:
        return main
    warm = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warm, main], [cfg.warmup_steps])


def _decay_mask(params):
    """Weight decay only on matrices (ndim >= 2): not on biases and norm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) -> AdamW(schedule, b1, b2, eps, weight_decay)."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=_decay_mask))
    return optax.chain(*parts)
