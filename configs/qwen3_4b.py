"""CURE on Qwen3-4B with long chain of thought (-> ReasonFlux-Coder-4B).

The 7B recipe (configs/qwen2_5_7b.py) plus the long-CoT reward of reference/cure.md (the
reference's ``enable_efficient``), on codes and on tests alike: the sign of each normalised reward
(above the group mean), a length threshold T = median length of the positive responses clipped
to [1000, 8000] tokens, positives rewarded for being shorter than T (efficient codes and tests),
all-correct groups shaped by length too (see rollout.rewards.length_aware).
Prompts: the reference's raw format, as in the 7B recipe (Qwen3's own chat template, with its
thinking switch: --config.rollout.prompts.mode=chat); the evaluation keeps 16384 new tokens (the
long chain of thought) instead of the paper protocol's 10000.

GPU layout (8 x 80 GB), as the 7B recipe's: learner on GPUs 0-3 (mesh.devices, fsdp=4), vLLM
on GPUs 4-7 (rollout.devices) with tensor parallel 2.

What acts in the update, as in configs/qwen2_5_7b.py: separate optimizer steps for the codes
and then the tests (learner.role_updates = "separate"), old log-probs from before both, so the
PPO clip acts in the tests' step only; the policy gradient weighted by the truncated importance
weight (tis_cap 2), the KL 0.01 to the initial model and the gradient clip 1.0 shape the update.
`configs/qwen3_4b.py:minibatches4` takes 4 minibatches per role (learner.minibatches = 4), and the
clip then acts in the codes' steps too.

The learner starts from the safetensors of rollout.model_path (converted on the fly), or from
config.model.init_checkpoint when given; without either, cure-train stops with a one-line error.

    cure-train --config=configs/qwen3_4b.py --workdir=runs/4b \
        --config.rollout.model_path=<Qwen3-4B dir>

Or convert once to Orbax and start the learner from that checkpoint:
    cure-convert hf-to-orbax --hf_dir=<Qwen3-4B dir> --ckpt_dir=ckpt/qwen3-4b
    cure-train --config=configs/qwen3_4b.py --workdir=runs/4b \
        --config.rollout.model_path=<Qwen3-4B dir> --config.model.init_checkpoint=ckpt/qwen3-4b
"""
from __future__ import annotations

import pathlib

import ml_collections

from cure_jax.config import config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe, or a variant of the 7B recipe's (`:minibatches4`)."""
    c = config_file(pathlib.Path(__file__).with_name("qwen2_5_7b.py"), arg)
    c.model.preset = "qwen3-4b"
    c.cure.update({"long_cot_codes": True, "long_cot_tests": True,
                   "long_cot_min_len": 1000.0, "long_cot_max_len": 8000.0})
    c.rollout.max_tokens = 16384
    c.rollout.engine_options.update({"tensor_parallel_size": 2, "max_model_len": 18432})
    c.eval.max_tokens = 16384
    return c

