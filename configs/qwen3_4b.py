"""CURE on Qwen3-4B with long chain of thought (-> ReasonFlux-Coder-4B).

The 7B recipe (configs/qwen2_5_7b.py) plus the long-CoT unit-test reward of reference/cure.md:
the sign of each test's reward, a length threshold T = median length of the positive responses
clipped to [1000, 8000] tokens, positives rewarded for being shorter than T (efficient tests).
Qwen3 has its own chat template (thinking); prompts use it.

GPU layout (8 x 80 GB), as the 7B recipe's: learner on GPUs 0-3 (mesh.devices, fsdp=4), vLLM
on GPUs 4-7 (rollout.devices) with tensor parallel 2.

    cure-train --config=configs/qwen3_4b.py --workdir=runs/4b \
        --config.rollout.model_path=<Qwen3-4B dir> --config.model.init_checkpoint=ckpt/qwen3-4b
"""
from __future__ import annotations

import pathlib

import ml_collections

from cure_jax.config import config_file


def get_config() -> ml_collections.ConfigDict:
    c = config_file(pathlib.Path(__file__).with_name("qwen2_5_7b.py"))
    c.model.preset = "qwen3-4b"
    c.cure.update({"long_cot_tests": True, "long_cot_min_len": 1000.0, "long_cot_max_len": 8000.0})
    c.rollout.max_tokens = 16384
    c.rollout.engine_options.update({"tensor_parallel_size": 2, "max_model_len": 18432})
    c.eval.max_tokens = 16384
    return c

