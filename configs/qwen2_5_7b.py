"""CURE on Qwen2.5-7B-Instruct (-> ReasonFlux-Coder-7B): the reference recipe on one 8-GPU node.

Hyper-parameters (reference/cure.md): 120 steps of 100 CodeContests_train problems, k_code =
k_case = 16 samples at temperature 1.0 / top_p 1.0, up to 10k new tokens (training on the
first 8k), at most 8 ground-truth tests per problem, fraction-scaled unit-test rewards,
per-problem z-scored advantages; AdamW lr 1e-6 constant, betas (0.9, 0.95), no weight decay,
clip 1.0, PPO clip 0.2, KL 0.01 (k3) to the frozen initial model, token-mean loss, bf16.

GPU layout (8 x 80 GB): the JAX learner on GPUs 0-3 (mesh fsdp=4; launch with
CUDA_VISIBLE_DEVICES=0,1,2,3 cure-train ...), the vLLM rollout server on GPUs 4-7
(rollout.devices, tensor parallel 4); weights move between them through the node's shared memory.

Before training:
    cure-data download --dataset=CodeContests_train --out=data/
    cure-data download --dataset=LiveBench --out=data/
    cure-convert hf-to-orbax --hf_dir=<Qwen2.5-7B-Instruct dir> --out=ckpt/qwen2.5-7b   # learner init
    CUDA_VISIBLE_DEVICES=0,1,2,3 cure-train --config=configs/qwen2_5_7b.py --workdir=runs/7b \
        --config.rollout.model_path=<Qwen2.5-7B-Instruct dir> --config.model.init_checkpoint=ckpt/qwen2.5-7b
"""
from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict({
        "preset": "qwen2.5-7b-instruct", "hf_dir": "", "init_checkpoint": "", "param_dtype": "float32",
        "dtype": "bfloat16", "attention_impl": "auto", "remat_policy": "dots_with_no_batch_dims_saveable"})
    c.model.arch = ml_collections.ConfigDict()

    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tp": 1})

    # "reference-faithful" (configs/learner_presets.py), with real old log-probs and a frozen
    # reference (so PPO clip and KL act), codes and tests in one batch.
    c.learner = ml_collections.ConfigDict({
        "lr": 1e-6, "lr_schedule": "constant", "warmup_steps": 0, "decay_steps": 0, "final_lr_ratio": 0.0,
        "b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.0, "grad_clip": 1.0,
        "clip_low": 0.2, "clip_high": 0.2, "dual_clip": 0.0, "log_ratio_clamp": 20.0,
        "kl_coef": 0.01, "kl_estimator": "k3", "kl_reference": "initial", "entropy_coef": 0.0,
        "tis_cap": 2.0, "agg_mode": "token-mean", "norm_constant": 0.0,
        "ppo_epochs": 1, "minibatches": 1, "micro_batch_size": 8, "old_logprobs": "recompute",
        "temperature": 1.0, "logprob_chunk": 1024, "length_bucket": 512, "offload_reference": False})

    c.train = ml_collections.ConfigDict({
        "steps": 120, "log_every": 1, "histogram_every": 10, "text_every": 10, "checkpoint_every": 10,
        "eval_every": 10, "keep_checkpoints": 3, "async_checkpoint": True})

    c.rollout = ml_collections.ConfigDict({
        "source": "cure", "mode": "sync", "engine": "vllm", "model_path": "", "devices": "4,5,6,7",
        "problems_per_step": 100, "k_code": 16, "k_case": 16, "max_gt_tests": 8, "temperature": 1.0,
        "top_p": 1.0, "top_k": 0, "max_tokens": 10240, "max_len": 9216, "seed": 0, "show_example": True,
        "max_staleness": 1, "weights_dtype": "bfloat16", "drop_zero_signal": True, "restarts": 1,
        "startup_timeout_s": 1800.0, "step_timeout_s": 7200.0, "heartbeat_timeout_s": 120.0})
    c.rollout.engine_options = ml_collections.ConfigDict({
        "dtype": "bfloat16", "tensor_parallel_size": 4, "gpu_memory_utilization": 0.85,
        "max_model_len": 12288, "enable_prefix_caching": True})
    c.rollout.prompts = ml_collections.ConfigDict({"mode": "auto"})

    c.cure = ml_collections.ConfigDict({"scaling": "fraction", "label_free": False,
                                            "long_cot_tests": False, "long_cot_codes": False})
    c.data = ml_collections.ConfigDict({"train": "data/CodeContests_train.json",
                                            "eval": "data/LiveBench.json"})
    c.sandbox = ml_collections.ConfigDict({"workers": 0, "isolation": "auto", "time_multiplier": 1.0,
                                               "memory_mb": 1024})
    c.eval = ml_collections.ConfigDict({
        "k_code": 16, "k_case": 16, "temperature": 0.8, "top_p": 0.95, "top_k": 40, "max_tokens": 10240, "seed": 0,
        "bon": ((1, 16), (4, 16), (16, 16)), "max_problems": 0})
    return c
