"""Learner update with shared prompts (`learner.share_prompts`) vs one row per response.

The batch has the tiny default's shape (configs/tiny.py): 8 problems x (8 codes + 8 tests), so
16 prompts of `--prompt` tokens, each answered 8 times with responses of 30-70 tokens; the model
is the shipped tiny coder; the learner settings are the tiny default's (2 minibatches of 32-row
micro-batches, KL to the reference, old log-probs recomputed). Both sides run the same
`Learner.update` on the same batch, alternating, after a warm-up that compiles every shape;
the figure is the median update time. The last lines also give the tokens each side runs the
model on per update and the largest parameter difference after one update (summation order
only).

    python benchmarks/prompt_sharing.py [--rounds 5] [--prompt 210]

RESULT prompt_sharing ours=<s per update, shared> baseline=<s, one row each> ratio=<baseline/ours>
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

TINY_CODER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "rollout", "assets",
                          "tiny_coder")


def tiny_step_batch(prompt: int, problems: int = 8, k: int = 8, vocab: int = 1024, seed: int = 0):
    """An experience batch shaped like one tiny-default step (random tokens and advantages)."""
    from cure_jax.experience import ExperienceBatch
    rng = np.random.default_rng(seed)
    n = problems * 2 * k
    resp = rng.integers(30, 71, n).astype(np.int32)
    plen = (prompt + rng.integers(-20, 21, problems * 2)).repeat(k).astype(np.int32)
    length = int((plen + resp).max())
    tokens = np.zeros((n, length), np.int32)
    roll = np.zeros((n, length), np.float32)
    for g in range(problems * 2):
        p = int(plen[g * k])
        prompt_tokens = rng.integers(1, vocab, p)
        for i in range(g * k, (g + 1) * k):
            tokens[i, :p] = prompt_tokens
            tokens[i, p:p + resp[i]] = rng.integers(1, vocab, resp[i])
            roll[i, p:p + resp[i]] = -rng.exponential(1.0, resp[i])
    kind = np.tile(np.repeat(np.array([0, 1], np.int8), k), problems)
    return ExperienceBatch(tokens=tokens, prompt_len=plen, response_len=resp,
                           rollout_logprobs=roll, advantage=rng.normal(size=n).astype(np.float32),
                           kind=kind, problem_id=(np.arange(n) // (2 * k)).astype(np.int32),
                           policy_version=np.zeros(n, np.int32),
                           reward=rng.normal(size=n).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=210, help="mean prompt length in tokens")
    args = ap.parse_args()

    import jax

    from cure_jax import sharding
    from cure_jax.config import LearnerConfig
    from cure_jax.learner import make_learner
    from cure_jax.models.qwen import QwenConfig

    model = QwenConfig.from_hf_dir(TINY_CODER, attention_impl="xla")
    base = LearnerConfig(lr=3e-4, clip_high=0.28, tis_cap=2.0, minibatches=2,
                         micro_batch_size=32, logprob_chunk=128, length_bucket=32)
    mesh = sharding.make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    batch = tiny_step_batch(args.prompt)
    sides = {}
    for name, share in (("shared", True), ("rows", False)):
        learner = make_learner(model, dataclasses.replace(base, share_prompts=share), mesh, seed=0)
        params = jax.device_get(learner.init_state().params)
        sides[name] = (learner, params, learner.reference_params(learner.state_from_params(params).params))
    times: dict[str, list[float]] = {k: [] for k in sides}
    after, tokens = {}, {}
    for r in range(args.rounds + 1):
        for name, (learner, params, ref) in sides.items():
            state = learner.state_from_params(params)  # the update donates its state
            jax.block_until_ready(state)
            t0 = time.perf_counter()
            new, metrics = learner.update(state, batch, ref)
            jax.block_until_ready(new.params)
            if r:  # round 0 compiles
                times[name].append(time.perf_counter() - t0)
            else:
                after[name] = jax.device_get(new.params)
                tokens[name] = metrics["perf/padded_tokens"]
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(after["shared"]), jax.tree.leaves(after["rows"])))
    ours, baseline = statistics.median(times["shared"]), statistics.median(times["rows"])
    print(f"model tokens per update: shared {tokens['shared']:.0f}, one row each {tokens['rows']:.0f}")
    print(f"largest parameter difference after one update: {diff:.2e}")
    print(f"RESULT prompt_sharing ours={ours:.3f} baseline={baseline:.3f} ratio={baseline / ours:.2f}")


if __name__ == "__main__":
    main()
