"""Embedded default: CURE on the shipped tiny coder, learning visibly on 2 CPU cores in minutes.

    cure-train --config=configs/tiny.py --workdir=runs/tiny [--config.train.steps=50 ...]

The policy is rollout/assets/tiny_coder (a 2-layer Qwen2, head_dim 32 so vLLM's CPU build serves
it, warm-started by configs/warmstart.py on the synthetic stdin/stdout tasks of rollout.tiny_tasks);
the data are rollout/assets/tasks (train, and a held-out split whose parameters training never
sees). Each step the rollout server (vLLM's CPU build, or `rollout.engine = "hf"`) samples codes
and unit tests, the sandbox executes codes x (generated + ground-truth tests), CURE rewards
become advantages, the JAX learner updates the policy and pushes its weights back into the
engine; every `train.eval_every` steps (and at step 0) the held-out split is evaluated
(`eval/*` in TensorBoard).

Variants (`--config=configs/tiny.py:<variant>`):
  random     a tiny random Qwen2 (vocabulary 512) on the embedded paper-format problems; its HF
             directory is built into `<workdir>/policy_init_hf`. It exercises the whole loop in
             seconds but writes no parsable code, so its rewards are zero.
  synthetic  learner only: the random policy is rewarded for a target token (rollout.synthetic).
"""
from __future__ import annotations

import pathlib

import ml_collections

from cure_jax.config import default_config

ASSETS = pathlib.Path(__file__).resolve().parent.parent / "rollout" / "assets"
VARIANTS = ("", "random", "synthetic")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The tiny coder (default) or a variant of the random policy (see the module docstring)."""
    arg = arg or ""
    if arg not in VARIANTS:
        raise ValueError(f"configs/tiny.py: unknown variant {arg!r}; use one of {VARIANTS[1:]} "
                         f"or nothing")
    c = _random_policy()
    if arg:
        c.model.init = "random"  # a random policy on purpose (the default needs weights)
    if arg == "synthetic":
        c.rollout.source = "synthetic"
    elif not arg:
        _tiny_coder(c)
    return c


def _random_policy() -> ml_collections.ConfigDict:
    """The random policy on the embedded problems: the defaults (cure_jax.config) plus these."""
    c = default_config()
    c.model.arch = ml_collections.ConfigDict({
        "family": "qwen2", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 1024})
    # share_prompts: each prompt's 2k responses run through the learner with the prompt once
    # (the prompts are several times longer than the responses here).
    c.learner.update({"lr": 3e-3, "clip_high": 0.28, "tis_cap": 2.0, "logprob_chunk": 256,
                      "length_bucket": 256, "share_prompts": True})
    c.train.update({"steps": 3, "histogram_every": 5, "checkpoint_every": 2, "eval_every": 3})
    c.rollout.update({"source": "cure", "problems_per_step": 2, "k_code": 4, "k_case": 4,
                      "max_tokens": 48, "max_len": 1024, "drop_zero_signal": False,
                      "step_timeout_s": 900.0})
    # vLLM's CPU build in-process (one process, no workers); the hf backend ignores these.
    c.rollout.engine_options.update({
        "dtype": "float32", "max_model_len": 1024, "in_process": True,
        "distributed_executor_backend": "uni", "gpu_memory_utilization": 0.5, "kv_cache_gb": 1})
    c.rollout.synthetic.update({"prompt_len": 6, "response_len": 6})
    c.sandbox.workers = 2
    # Evaluation sampling: the paper's temperature/top_p/top_k (the defaults), seeded.
    c.eval.update({"k_code": 2, "k_case": 2, "max_tokens": 32, "bon": ((1, 2), (2, 2)),
                   "max_problems": 4})
    return c


def _tiny_coder(c: ml_collections.ConfigDict) -> None:
    """The shipped warm-started policy on the synthetic tasks, with held-out evaluation."""
    c.model.hf_dir = str(ASSETS / "tiny_coder")
    c.model.arch = ml_collections.ConfigDict()  # the architecture comes from hf_dir
    c.learner.update({"lr": 3e-4, "minibatches": 2, "micro_batch_size": 32,
                      "logprob_chunk": 128, "length_bucket": 32})
    c.train.update({"steps": 100, "eval_every": 10, "histogram_every": 10,
                    "checkpoint_every": 50, "keep_checkpoints": 2})
    c.rollout.update({"problems_per_step": 8, "k_code": 8, "k_case": 8, "max_gt_tests": 5,
                      "max_tokens": 128, "max_len": 512})
    c.rollout.engine_options.update({"gpu_memory_utilization": 0.3})
    c.eval.update({"k_code": 4, "k_case": 4, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                   "max_tokens": 128, "bon": ((1, 4), (4, 4)), "max_problems": 0})
    c.data.update({"train": str(ASSETS / "tasks" / "train.json"),
                   "eval": str(ASSETS / "tasks" / "eval.json")})
