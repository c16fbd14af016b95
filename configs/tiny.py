"""Embedded default: CURE on a tiny random Qwen2 policy, a few steps on 2 CPU cores in minutes.

    cure-train --config=configs/tiny.py --workdir=runs/tiny [--config.train.steps=5 ...]

`rollout.source = "cure"` (the default) runs the real loop: the rollout server (vLLM's CPU build,
or `rollout.engine = "hf"`) samples codes and unit tests for problems of the embedded train
split, the sandbox executes codes x (generated + ground-truth tests), CURE rewards become
advantages, the JAX learner updates the policy and pushes its weights back into the engine.
The policy is random (vocabulary 512, hidden 128, 2 layers, head_dim 32 so vLLM's CPU kernels
serve it) with a byte-level BPE tokenizer trained on the project's own text; its HF directory
is built into `<workdir>/policy_init_hf` at start-up. It does not learn to code: that needs a
real model (configs/qwen2_5_7b.py and friends).

`rollout.source = "synthetic"` is the learner-only mode: the policy samples random prompts and is
rewarded for a target token (rollout.synthetic).
"""
from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The CURE default; ``--config=configs/tiny.py:synthetic`` selects the learner-only mode."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = ""
    c.model.hf_dir = ""
    c.model.init_checkpoint = ""
    c.model.arch = ml_collections.ConfigDict({
        "family": "qwen2", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 1024})
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
        "ppo_epochs": 1, "minibatches": 1, "micro_batch_size": 0, "old_logprobs": "recompute",
        "temperature": 1.0, "logprob_chunk": 256, "length_bucket": 256, "offload_reference": False})

    c.train = ml_collections.ConfigDict({
        "steps": 3, "log_every": 1, "histogram_every": 5, "text_every": 10, "checkpoint_every": 2,
        "eval_every": 3, "keep_checkpoints": 3, "async_checkpoint": True})

    c.rollout = ml_collections.ConfigDict({
        "source": "cure", "mode": "sync", "engine": "vllm", "model_path": "", "devices": "",
        "problems_per_step": 2, "k_code": 4, "k_case": 4, "max_gt_tests": 8, "temperature": 1.0, "top_p": 1.0,
        "top_k": 0, "max_tokens": 48, "max_len": 1024, "seed": 0, "show_example": True, "max_staleness": 1,
        "weights_dtype": "float32", "drop_zero_signal": False, "restarts": 0,
        "startup_timeout_s": 600.0, "step_timeout_s": 900.0, "heartbeat_timeout_s": 30.0})
    # vLLM's CPU build in-process (one process, no workers); the hf backend ignores these.
    c.rollout.engine_options = ml_collections.ConfigDict({
        "dtype": "float32", "max_model_len": 1024, "enforce_eager": True, "in_process": True,
        "distributed_executor_backend": "uni", "gpu_memory_utilization": 0.5, "kv_cache_gb": 1})
    c.rollout.prompts = ml_collections.ConfigDict({"mode": "auto"})
    c.rollout.synthetic = ml_collections.ConfigDict({
        "num_prompts": 4, "group_size": 4, "prompt_len": 6, "response_len": 6, "target_token": 3,
        "temperature": 1.0})

    c.cure = ml_collections.ConfigDict({"scaling": "fraction", "label_free": False,
                                            "long_cot_tests": False, "long_cot_codes": False})
    c.data = ml_collections.ConfigDict({"train": "embedded:train", "eval": "embedded:eval"})
    c.sandbox = ml_collections.ConfigDict({"workers": 2, "isolation": "auto"})
    # Evaluation sampling (the paper's temperature/top_p/top_k); seed -1: unseeded, because
    # vLLM's CPU build refuses seeded top-k/top-p requests.
    c.eval = ml_collections.ConfigDict({
        "k_code": 2, "k_case": 2, "temperature": 0.8, "top_p": 0.95, "top_k": 40, "max_tokens": 32, "seed": -1,
        "bon": ((1, 2), (2, 2)), "max_problems": 4})
    if arg == "synthetic":
        c.rollout.source = "synthetic"
    elif arg:
        raise ValueError(f"configs/tiny.py: unknown variant {arg!r} (use 'synthetic' or nothing)")
    return c
