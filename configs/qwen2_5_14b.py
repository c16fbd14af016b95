"""CURE on Qwen2.5-14B-Instruct (-> ReasonFlux-Coder-14B): the 7B recipe (configs/qwen2_5_7b.py)
at 14B. Same hyper-parameters; the learner shards over 4 GPUs with full rematerialisation and
offloads the frozen reference to host memory, vLLM serves on the other 4 (tensor parallel 4).

    CUDA_VISIBLE_DEVICES=0,1,2,3 cure-train --config=configs/qwen2_5_14b.py --workdir=runs/14b \
        --config.rollout.model_path=<Qwen2.5-14B-Instruct dir> --config.model.init_checkpoint=ckpt/qwen2.5-14b
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = _sibling("qwen2_5_7b").get_config()
    c.model.update({"preset": "qwen2.5-14b-instruct", "remat_policy": "full"})
    c.learner.update({"micro_batch_size": 4, "offload_reference": True})
    c.rollout.engine_options.gpu_memory_utilization = 0.9
    return c


def _sibling(name: str):
    """Another config file of this directory, as a module."""
    spec = importlib.util.spec_from_file_location(
        f"_cure_config_{name}", pathlib.Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
