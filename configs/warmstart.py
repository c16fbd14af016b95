"""Warm-start recipe of the shipped tiny coder (rollout/assets/tiny_coder).

    python -m cure_jax.warmstart --config=configs/warmstart.py --out=rollout/assets/tiny_coder

The recipe is the defaults of cure_jax.warmstart.WarmstartConfig (a 2-layer Qwen2 with hidden
size 128 and 4 query / 2 key-value heads of 32; AdamW with warm-up then cosine decay to 10%; a
corpus of 4 training instances per task kind and parameter, 1024-token BPE). Override any field
with --config.<field>=...
"""
from __future__ import annotations

import ml_collections

from cure_jax.warmstart import WarmstartConfig
from rollout.contract.config import defaults


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(defaults(WarmstartConfig))
