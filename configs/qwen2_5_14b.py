"""CURE on Qwen2.5-14B-Instruct (-> ReasonFlux-Coder-14B): the 7B recipe (configs/qwen2_5_7b.py)
at 14B. Same hyper-parameters; the learner shards over 4 GPUs with full rematerialisation and
offloads the frozen reference to host memory, vLLM serves on the other 4 (tensor parallel 4).

Memory: `cure-train --dry_run --dry_run_devices=4` plans 87 GiB per learner GPU for the longest
micro-batch (fp32 weights, Adam and gradients alone are 55 GiB), above an 80 GB GPU; on fake CPU
devices the temporaries lean high (README, "Memory before the run"). Run `--dry_run` on the GPU
node itself before training; the learner on 8 GPUs (fsdp 8) plans 50.8 GiB.

What acts in the update, as in configs/qwen2_5_7b.py: separate optimizer steps for the codes
and then the tests (learner.role_updates = "separate"), old log-probs from before both, so the
PPO clip acts in the tests' step only; the policy gradient weighted by the truncated importance
weight (tis_cap 2), the KL 0.01 to the initial model and the gradient clip 1.0 shape the update.
`configs/qwen2_5_14b.py:minibatches4` takes 4 minibatches per role (learner.minibatches = 4), and the
clip then acts in the codes' steps too.

The learner starts from the safetensors of rollout.model_path (converted on the fly), or from
config.model.init_checkpoint when given; without either, cure-train stops with a one-line error.

    cure-train --config=configs/qwen2_5_14b.py --workdir=runs/14b \
        --config.rollout.model_path=<Qwen2.5-14B-Instruct dir>

Or convert once to Orbax and start the learner from that checkpoint:
    cure-convert hf-to-orbax --hf_dir=<Qwen2.5-14B-Instruct dir> --ckpt_dir=ckpt/qwen2.5-14b
    cure-train --config=configs/qwen2_5_14b.py --workdir=runs/14b \
        --config.rollout.model_path=<Qwen2.5-14B-Instruct dir> --config.model.init_checkpoint=ckpt/qwen2.5-14b
"""
from __future__ import annotations

import pathlib

import ml_collections

from cure_jax.config import config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe, or a variant of the 7B recipe's (`:minibatches4`)."""
    c = config_file(pathlib.Path(__file__).with_name("qwen2_5_7b.py"), arg)
    c.model.update({"preset": "qwen2.5-14b-instruct", "remat_policy": "full", "scan_layers": True})
    c.learner.update({"micro_batch_size": 4, "offload_reference": True})
    c.rollout.engine_options.gpu_memory_utilization = 0.9
    return c

