"""CURE on a laptop: the shipped warm-started tiny coder on the synthetic tasks.

    cure-train --config=configs/tiny_coder.py --workdir=runs/tiny_coder

Policy: rollout/assets/tiny_coder (a 2-layer Qwen2 warm-started by configs/warmstart.py; about
13% held-out code accuracy at temperature 1). Data: rollout/assets/tasks (the synthetic task
families of rollout.tasks; the held-out split uses parameters never seen in training).
"""
from __future__ import annotations

import pathlib

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSETS = ROOT / "rollout" / "assets"


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict({
        "preset": "", "hf_dir": str(ASSETS / "tiny_coder"), "init_checkpoint": "",
        "arch": ml_collections.ConfigDict({}), "param_dtype": "float32", "dtype": "float32",
        "attention_impl": "auto", "remat_policy": "none"})
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tp": 1})

    c.learner = ml_collections.ConfigDict({
        "lr": 3e-4, "lr_schedule": "constant", "warmup_steps": 0, "decay_steps": 0,
        "final_lr_ratio": 0.0, "b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.0,
        "grad_clip": 1.0, "clip_low": 0.2, "clip_high": 0.28, "dual_clip": 0.0,
        "log_ratio_clamp": 20.0, "kl_coef": 0.01, "kl_estimator": "k3",
        "kl_reference": "initial", "entropy_coef": 0.0, "tis_cap": 2.0,
        "agg_mode": "token-mean", "norm_constant": 0.0, "ppo_epochs": 1, "minibatches": 2,
        "micro_batch_size": 32, "old_logprobs": "recompute", "temperature": 1.0,
        "logprob_chunk": 128, "length_bucket": 32, "offload_reference": False})

    c.train = ml_collections.ConfigDict({
        # eval_every stays 0 until the vLLM CPU build takes seeded requests (see below); measure
        # held-out skill with: python -m rollout.tasks.measure --backend=vllm --seed=-1 ...
        "steps": 100, "eval_every": 0, "log_every": 1, "histogram_every": 10,
        "text_every": 10, "checkpoint_every": 50, "keep_checkpoints": 2,
        "async_checkpoint": True})

    c.rollout = ml_collections.ConfigDict({
        "source": "cure", "mode": "sync", "engine": "vllm", "problems_per_step": 8,
        "k_code": 8, "k_case": 8, "max_gt_tests": 5, "temperature": 1.0, "top_p": 1.0,
        "top_k": 0, "max_tokens": 128, "max_len": 512, "show_example": True,
        # unseeded requests: vLLM's CPU build crashes on seeded requests whose prefill is
        # chunked ("CPU Generator does not use offset"); the engine's own seed still applies
        "seed": -1,
        # vLLM's CPU build: a small KV cache, eager mode; the memory fraction is of host RAM
        "engine_options": ml_collections.ConfigDict({
            "gpu_memory_utilization": 0.3, "kv_cache_gb": 1, "enforce_eager": True,
            "max_model_len": 1024})})
    c.eval = ml_collections.ConfigDict({
        "k_code": 4, "k_case": 4, "max_gt_tests": 0, "temperature": 1.0, "top_p": 1.0,
        "top_k": 0, "max_tokens": 128, "seed": 12345, "bon": ((1, 4), (4, 4)),
        "max_problems": 0})
    c.cure = ml_collections.ConfigDict({"scaling": "fraction"})
    c.sandbox = ml_collections.ConfigDict({"workers": 2, "time_s": 1.0})
    c.data = ml_collections.ConfigDict({
        "train": str(ASSETS / "tasks" / "train.json"),
        "eval": str(ASSETS / "tasks" / "eval.json")})
    return c
