"""CURE on Qwen2.5-14B-Instruct (-> ReasonFlux-Coder-14B): the 7B recipe (configs/qwen2_5_7b.py)
at 14B. Same hyper-parameters; the learner shards over 4 GPUs with full rematerialisation and
offloads the frozen reference to host memory, vLLM serves on the other 4 (tensor parallel 4).

    cure-train --config=configs/qwen2_5_14b.py --workdir=runs/14b \
        --config.rollout.model_path=<Qwen2.5-14B-Instruct dir> --config.model.init_checkpoint=ckpt/qwen2.5-14b
"""
from __future__ import annotations

import pathlib

import ml_collections

from cure_jax.config import config_file


def get_config() -> ml_collections.ConfigDict:
    c = config_file(pathlib.Path(__file__).with_name("qwen2_5_7b.py"))
    c.model.update({"preset": "qwen2.5-14b-instruct", "remat_policy": "full"})
    c.learner.update({"micro_batch_size": 4, "offload_reference": True})
    c.rollout.engine_options.gpu_memory_utilization = 0.9
    return c

