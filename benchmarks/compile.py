"""Compile time of the learner's train step: decoder layers as one scan vs unrolled.

The train step is the learner's own gradient program (`Learner.step_programs`: log-probs,
PPO loss, backward, accumulation) and its AdamW update, compiled ahead of time for one
micro-batch of a Qwen2-shaped model (hidden 256, vocabulary 4096, 4 x 256 tokens, fp32, full
remat), at 2 and at 28 layers (Qwen2.5-7B's depth), with `model.scan_layers` on and off. The
persistent compilation cache is off, so every compile is a real one; each is the median of
`--repeats` fresh learners. Unrolled, the compile time grows with the depth; scanned, XLA
compiles one layer whatever the depth.

    python benchmarks/compile.py [--layers 2 28] [--repeats 2]

Last lines: RESULT compile_scan_vs_unrolled_<L>_layers ours=<s scanned> baseline=<s unrolled>
ratio=<ours/baseline> for each depth, and RESULT compile_depth_growth_scanned ours=<s at the
deepest / s at the shallowest, scanned> baseline=<the same, unrolled>.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def compile_seconds(layers: int, scan: bool) -> float:
    """Seconds to compile the gradient program and the optimizer update of a fresh learner."""
    import jax

    from configs.tiny import get_config
    from cure_jax.config import load_config
    from cure_jax.dry_run import worst_case_batch
    from cure_jax.train import build_learner

    c = get_config("random")
    c.model.arch.update({"num_hidden_layers": layers, "hidden_size": 256, "intermediate_size": 512,
                         "vocab_size": 4096, "num_attention_heads": 4, "num_key_value_heads": 2,
                         "head_dim": 64})
    c.model.update({"scan_layers": scan, "remat_policy": "full"})
    c.learner.update({"share_prompts": False, "kl_coef": 0.0, "micro_batch_size": 4})
    c.rollout.update({"max_len": 256, "problems_per_step": 1, "k_code": 2, "k_case": 2})
    cfg = load_config(c)
    learner = build_learner(cfg)
    programs = learner.step_programs(worst_case_batch(cfg, learner, jax.process_count()))
    t0 = time.perf_counter()
    for name in ("accumulate gradients", "optimizer update"):
        programs[name].compile()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 28])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    import jax
    jax.config.update("jax_enable_compilation_cache", False)
    secs = {}
    for layers in args.layers:
        for scan in (True, False):
            runs = [compile_seconds(layers, scan) for _ in range(args.repeats)]
            secs[layers, scan] = statistics.median(runs)
            print(f"{layers:3d} layers {'scanned ' if scan else 'unrolled'}: compile "
                  f"{secs[layers, scan]:.2f} s (runs {', '.join(f'{r:.2f}' for r in runs)})",
                  flush=True)
    for layers in args.layers:
        ours, base = secs[layers, True], secs[layers, False]
        print(f"RESULT compile_scan_vs_unrolled_{layers}_layers ours={ours:.2f} "
              f"baseline={base:.2f} ratio={ours / base:.3f}")
    lo, hi = min(args.layers), max(args.layers)
    grow_scan, grow_unrolled = secs[hi, True] / secs[lo, True], secs[hi, False] / secs[lo, False]
    print(f"RESULT compile_depth_growth_scanned ours={grow_scan:.2f} baseline={grow_unrolled:.2f} "
          f"ratio={grow_scan / grow_unrolled:.3f}")


if __name__ == "__main__":
    main()
