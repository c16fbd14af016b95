"""Learner presets applied on top of a config (`apply_preset(config, name)`).

"reference-faithful" reproduces the paper's learner settings (reference/cure.md): AdamW with
lr 1e-6 constant, betas (0.9, 0.95), weight decay 0, global-norm clip 1.0, PPO clip 0.2 both
sides, KL loss 0.01 with the k3 estimator against the frozen initial model, no entropy bonus,
token-mean aggregation, bf16 compute over fp32 master weights. Unlike the reference code, the
KL acts (a frozen reference) and Adam state persists. As in the reference, the codes and the
tests of a batch get separate updates (learner.role_updates = "separate": the codes' optimizer
step, then the tests', each a token-mean over its own rows). The PPO ratio is taken against the
old log-probs computed once before both steps: it is exactly 1 in the codes' step (nothing has
changed yet), so the clip acts only on the tests' step (after the codes' update) and, with
learner.ppo_epochs * learner.minibatches > 1, from each role's second step on.
"""
from __future__ import annotations

import ml_collections

PRESETS: dict[str, dict[str, dict]] = {
    "reference-faithful": {
        "learner": {"lr": 1e-6, "lr_schedule": "constant", "warmup_steps": 0, "b1": 0.9, "b2": 0.95,
                        "weight_decay": 0.0, "grad_clip": 1.0, "clip_low": 0.2, "clip_high": 0.2,
                        "dual_clip": 0.0, "kl_coef": 0.01, "kl_estimator": "k3", "kl_reference": "initial",
                        "entropy_coef": 0.0, "agg_mode": "token-mean", "ppo_epochs": 1, "minibatches": 1,
                        "role_updates": "separate", "old_logprobs": "recompute"},
        "model": {"param_dtype": "float32", "dtype": "bfloat16"},
    },
}


def apply_preset(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Overwrite the preset's fields in `config` (in place) and return it."""
    if name not in PRESETS:
        raise ValueError(f"unknown learner preset {name!r}; known: {sorted(PRESETS)}")
    for section, fields in PRESETS[name].items():
        for k, v in fields.items():
            config[section][k] = v
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`--config=configs/learner_presets.py:reference-faithful` = tiny.py + that preset."""
    import pathlib

    from cure_jax.config import config_file
    return apply_preset(config_file(pathlib.Path(__file__).with_name("tiny.py")),
                        arg or "reference-faithful")
