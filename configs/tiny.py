"""Embedded default: a tiny random Qwen2-architecture policy that trains on a laptop CPU in minutes.

cure-train --config=configs/tiny.py --workdir=runs/tiny [--config.learner.lr=3e-4 ...]

Until the rollout server lands, experience comes from the seeded synthetic source
(`rollout.source = "synthetic"`: the policy samples, reward = share of a target token).
"""
from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = ""
    c.model.hf_dir = ""
    c.model.init_checkpoint = ""
    c.model.arch = ml_collections.ConfigDict({
        "family": "qwen2", "vocab_size": 64, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 256})
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"
    c.model.attention_impl = "auto"
    c.model.remat_policy = "none"

    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tp": 1})

    c.learner = ml_collections.ConfigDict({
        "lr": 3e-3, "lr_schedule": "constant", "warmup_steps": 0, "decay_steps": 0, "final_lr_ratio": 0.0,
        "b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.0, "grad_clip": 1.0,
        "clip_low": 0.2, "clip_high": 0.28, "dual_clip": 0.0, "log_ratio_clamp": 20.0,
        "kl_coef": 0.01, "kl_estimator": "k3", "kl_reference": "initial", "entropy_coef": 0.0,
        "tis_cap": 2.0, "agg_mode": "token-mean", "norm_constant": 0.0,
        "ppo_epochs": 1, "minibatches": 2, "micro_batch_size": 8, "old_logprobs": "recompute",
        "temperature": 1.0, "logprob_chunk": 64, "length_bucket": 8, "offload_reference": False})

    c.train = ml_collections.ConfigDict({
        "num_steps": 30, "log_every": 1, "histogram_every": 5, "text_every": 10, "checkpoint_every": 10,
        "keep_checkpoints": 3, "async_checkpoint": True})

    c.rollout = ml_collections.ConfigDict()
    c.rollout.source = "synthetic"
    c.rollout.synthetic = ml_collections.ConfigDict({
        "num_prompts": 4, "group_size": 4, "prompt_len": 6, "response_len": 6, "target_token": 3,
        "temperature": 1.0})
    return c
