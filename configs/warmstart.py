"""Warm-start recipe of the shipped tiny coder (rollout/assets/tiny_coder).

    python -m cure_jax.warmstart --config=configs/warmstart.py --out=rollout/assets/tiny_coder

Fields are those of cure_jax.warmstart.WarmstartConfig; override any with --config.<field>=...
"""
from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        # a tiny Qwen2: 2 layers, hidden 128, 4 query / 2 key-value heads of 32
        "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 0,
        "max_position_embeddings": 1024, "rope_theta": 10000.0, "tie_word_embeddings": True,
        # AdamW, warm-up then cosine decay to 10%
        "steps": 600, "batch_size": 16, "lr": 3e-3, "warmup_steps": 30, "final_lr_ratio": 0.1,
        "weight_decay": 0.01, "grad_clip": 1.0, "length_bucket": 64, "seed": 0,
        "log_every": 20,
        # corpus: 4 training instances per (task kind, parameter), 1024-token BPE
        "corpus_per_param": 4, "corpus_vocab_size": 1024,
    })
