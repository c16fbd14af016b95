"""CURE on Qwen2.5-7B-Instruct (-> ReasonFlux-Coder-7B): the reference recipe on one 8-GPU node.

Hyper-parameters (reference/cure.md): 120 steps of 100 CodeContests_train problems, k_code =
k_case = 16 samples at temperature 1.0 / top_p 1.0, up to 10k new tokens (training on the
first 8k), at most 8 ground-truth tests per problem, fraction-scaled unit-test rewards,
per-problem z-scored advantages; AdamW lr 1e-6 constant, betas (0.9, 0.95), no weight decay,
gradient clip 1.0, PPO clip 0.2, KL 0.01 (k3) to the frozen initial model, token-mean loss, bf16.

What acts in the update: the codes and the tests of a batch get separate optimizer steps, as in
the reference (learner.role_updates = "separate": codes first, then tests, each a token-mean over
its own rows), each one epoch of one minibatch. The old log-probs are computed once before both
steps (one forward pass without gradients), so in the codes' step the PPO ratio
pi_theta / pi_old is exactly 1 and the clip does not act; in the tests' step the policy has
moved by the codes' update, and the clip 0.2 acts there. Each token's gradient is the policy
gradient -A * grad log pi_theta, weighted by the truncated importance weight
min(pi_theta / pi_rollout, 2) against the engine's log-probs (learner.tis_cap; close to 1 in
sync mode, where vLLM holds the same weights, up to bf16/kernel differences), plus 0.01 x the
k3 KL to the frozen initial model, under the global-norm gradient clip 1.0.

Variant `configs/qwen2_5_7b.py:minibatches4` (also qwen2_5_14b.py / qwen3_4b.py:minibatches4):
learner.minibatches = 4. Each role's rows are shuffled into 4 minibatches, so 8 AdamW steps per
batch (4x the optimizer steps at the same lr); from each role's second minibatch on the ratio
departs from 1, so the clip acts in the codes' steps too.

GPU layout (8 x 80 GB): the JAX learner on GPUs 0-3 (mesh.devices, fsdp over all 4), the vLLM
rollout server on GPUs 4-7 (rollout.devices, tensor parallel 4); cure-train applies the split
itself. Weights move between them through the node's shared memory.

Initial weights: the learner starts from the safetensors of rollout.model_path (a local HF
directory, the one vLLM serves), converted on the fly at start-up; config.model.init_checkpoint,
when given, is used instead. Without either, cure-train stops with a one-line error (a random
start needs config.model.init=random).

Before training:
    cure-data download --dataset=CodeContests_train --out=data/
    cure-data download --dataset=LiveBench --out=data/
    cure-train --config=configs/qwen2_5_7b.py --workdir=runs/7b \
        --config.rollout.model_path=<Qwen2.5-7B-Instruct dir>

Or convert once to Orbax and start the learner from that checkpoint:
    cure-convert hf-to-orbax --hf_dir=<Qwen2.5-7B-Instruct dir> --ckpt_dir=ckpt/qwen2.5-7b
    cure-train --config=configs/qwen2_5_7b.py --workdir=runs/7b \
        --config.rollout.model_path=<Qwen2.5-7B-Instruct dir> --config.model.init_checkpoint=ckpt/qwen2.5-7b
"""
from __future__ import annotations

import pathlib

import ml_collections

from cure_jax.config import config_module, default_config

VARIANTS = ("", "minibatches4")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe, or a variant of it (see the module docstring)."""
    arg = arg or ""
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of the Qwen presets; use one of {VARIANTS[1:]} "
                         f"or nothing")
    c = default_config()
    # Whole layers rematerialised: keeping the matmul outputs (dots_with_no_batch_dims_saveable)
    # needs ~2.8 MB a token over 28 layers, ~51 GB for the longest micro-batch's 2 x 9216
    # tokens per GPU on top of the ~35 GB of weights, Adam, reference and gradients
    # (`cure-train --dry_run`, README "Memory before the run"). The layers run as one scan:
    # XLA compiles one layer whatever the depth.
    c.model.update({"preset": "qwen2.5-7b-instruct", "remat_policy": "full", "scan_layers": True})
    # The learner: "reference-faithful" (configs/learner_presets.py, bf16 compute over fp32
    # weights), a frozen reference for the KL, truncated IS against the rollout log-probs, codes
    # and tests in one batch. One optimizer step per batch: the PPO ratio is 1 and its clip
    # does not act (it does with the minibatches4 variant; see the module docstring).
    config_module(pathlib.Path(__file__).with_name("learner_presets.py")).apply_preset(c, "reference-faithful")
    c.learner.update({"tis_cap": 2.0, "micro_batch_size": 8, "length_bucket": 512})
    if arg == "minibatches4":
        c.learner.minibatches = 4  # 4 AdamW steps a batch: recomputed old log-probs, the clip acts
    c.mesh.devices = "0,1,2,3"  # the learner's GPUs; the rollout server's are rollout.devices
    c.train.update({"steps": 120, "eval_every": 10})

    c.rollout.update({
        "source": "cure", "devices": "4,5,6,7", "problems_per_step": 100,
        "k_code": 16, "k_case": 16, "max_gt_tests": 8, "temperature": 1.0, "top_p": 1.0,
        "top_k": 0, "max_tokens": 10240, "max_len": 9216, "weights_dtype": "bfloat16",
        "restarts": 1, "startup_timeout_s": 1800.0, "step_timeout_s": 7200.0,
        "heartbeat_timeout_s": 120.0})
    c.rollout.engine_options.update({"dtype": "bfloat16", "tensor_parallel_size": 4,
                                     "gpu_memory_utilization": 0.85, "max_model_len": 12288})
    c.cure.scaling = "fraction"
    c.data.update({"train": "data/CodeContests_train.json", "eval": "data/LiveBench.json"})
    # The reference's prompt format (rollout/templates/reference_*.jinja), for training and the
    # held-out evaluation alike; --config.rollout.prompts.mode=chat uses the chat template.
    c.rollout.prompts.mode = "reference"
    # The paper's evaluation protocol (rollout/contract/protocol.py): the first 8 ground-truth
    # tests, unparsed generated tests dropped, temperature 0.8 / top_p 0.95 / top_k 40, 10000
    # new tokens; BoN pairs the reference's (4,4) (16,16) and ours.
    c.eval.update({"protocol": "paper", "k_code": 16, "k_case": 16, "seed": 0,
                   "bon": ((1, 16), (4, 4), (4, 16), (16, 16))})
    return c

