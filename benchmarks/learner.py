"""Learner train-step throughput: our sharded JAX step vs a plain PyTorch transformers step.

Both sides train the same Qwen2-architecture model (same shapes, float32, same batch of
`--batch` x `--seq` tokens): ours runs `Learner.update` (chunked log-probs, PPO-clip loss,
global-norm clip, AdamW; KL off and one minibatch so the work is one forward + backward +
optimizer step), the baseline runs `Qwen2ForCausalLM` forward, cross-entropy, backward,
`clip_grad_norm_`, `torch.optim.AdamW.step`. Tokens/s = batch*seq / median step time.

    python benchmarks/learner.py                      # ~30M params, seq 512, a few minutes on CPU
    python benchmarks/learner.py --mfu --peak_tflops=989 --dtype=bfloat16 --preset=qwen2.5-1.5b-instruct
                                                      # GPU: MFU of our step only

`--preset` takes a shipped QwenConfig preset or one of the shapes in SHAPES below (published
Qwen2.5 configs without a preset file). On a machine with CUDA the torch side runs on the GPU.

Each side runs in its own child process (one after the other), so JAX's and torch's thread
pools never compete. Last line: RESULT learner_vs_torch ours=<tok/s> baseline=<tok/s> ratio=<ours/baseline>
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


# Published Qwen2.5 shapes (the HF config.json fields) used by the benchmarks; the small models
# have no preset file in cure_jax/models/qwen/presets.
_QWEN25 = {"family": "qwen2", "vocab_size": 151936, "tie_word_embeddings": True,
           "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
           "bos_token_id": 151643, "eos_token_id": 151645}
SHAPES = {
    "qwen2.5-0.5b-instruct": {**_QWEN25, "hidden_size": 896, "intermediate_size": 4864,
                              "num_hidden_layers": 24, "num_attention_heads": 14,
                              "num_key_value_heads": 2, "head_dim": 64},
    "qwen2.5-1.5b-instruct": {**_QWEN25, "hidden_size": 1536, "intermediate_size": 8960,
                              "num_hidden_layers": 28, "num_attention_heads": 12,
                              "num_key_value_heads": 2, "head_dim": 128},
}


def preset_shape(name: str, **overrides):
    """A QwenConfig from SHAPES or from the shipped presets (QwenConfig.preset)."""
    from cure_jax.models.qwen import QwenConfig
    if name in SHAPES:
        return QwenConfig(**{**SHAPES[name], **overrides})
    return QwenConfig.preset(name, **overrides)


def model_shape(args):
    from cure_jax.models.qwen import QwenConfig
    if args.preset:
        return preset_shape(args.preset, attention_impl="auto", remat_policy=args.remat)
    return QwenConfig(family="qwen2", vocab_size=args.vocab, hidden_size=args.hidden,
                      intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      head_dim=args.hidden // args.heads, rope_theta=10000.0,
                      tie_word_embeddings=False, max_position_embeddings=4096,
                      attention_impl="auto", remat_policy=args.remat)


def flops_per_token(qcfg, seq: int) -> float:
    """Model FLOPs of one trained token: matmul parameters (the input embedding is a lookup; a
    tied one is the LM head) and causal attention scores/values, forward + backward = 3 x forward."""
    l, h = qcfg.num_hidden_layers, qcfg.num_attention_heads * qcfg.head_dim
    dense = qcfg.num_params() - (0 if qcfg.tie_word_embeddings else qcfg.vocab_size * qcfg.hidden_size)
    return 6 * dense + 6 * l * h * seq


def torch_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_model(qcfg, dtype: str = "float32", device: str = "cpu"):
    """The transformers Qwen2/Qwen3 model of `qcfg` (random init, sdpa attention) on `device`."""
    import torch
    import transformers
    cls_cfg, cls = ((transformers.Qwen2Config, transformers.Qwen2ForCausalLM) if qcfg.family == "qwen2"
                    else (transformers.Qwen3Config, transformers.Qwen3ForCausalLM))
    hf = cls_cfg(**{k: v for k, v in qcfg.to_hf_dict().items()
                    if k not in ("architectures", "model_type", "torch_dtype")})
    hf.architectures = [qcfg.architecture]
    hf._attn_implementation = "sdpa"
    with torch.device(device):
        model = cls(hf)
    return model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])


def make_batch(args, vocab):
    from cure_jax.experience import ExperienceBatch
    rng = np.random.default_rng(0)
    n, length = args.batch, args.seq
    tokens = rng.integers(0, vocab, (n, length)).astype(np.int32)
    prompt = np.full(n, 16, np.int32)
    resp = np.full(n, length - 16, np.int32)
    t = np.arange(length)[None]
    mask = (t >= prompt[:, None])
    return ExperienceBatch(tokens=tokens, prompt_len=prompt, response_len=resp,
                           rollout_logprobs=np.where(mask, -3.0, 0.0).astype(np.float32),
                           advantage=rng.normal(size=n).astype(np.float32), kind=np.zeros(n, np.int8),
                           problem_id=np.zeros(n, np.int32), policy_version=np.zeros(n, np.int32),
                           reward=np.zeros(n, np.float32))


def bench_ours(args, qcfg):
    import jax

    from cure_jax import sharding
    from cure_jax.config import LearnerConfig
    from cure_jax.learner import make_learner
    mesh = sharding.make_mesh(data=1, fsdp=-1, tp=1)
    cfg = LearnerConfig(lr=1e-5, kl_coef=0.0, kl_reference="none", ppo_epochs=1, minibatches=1,
                        micro_batch_size=0, logprob_chunk=args.chunk, length_bucket=64, grad_clip=1.0)
    learner = make_learner(qcfg, cfg, mesh, param_dtype="float32", dtype=args.dtype, seed=0)
    state = learner.init_state()
    batch = make_batch(args, qcfg.vocab_size)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, m = learner.update(state, batch)
        jax.block_until_ready(state.params)
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        print(f"  ours  step {i}: {dt:.3f}s grad_norm {m['grad_norm']:.3f}", flush=True)
    return args.batch * args.seq / statistics.median(times)


def bench_torch(args, qcfg):
    import torch
    torch.manual_seed(0)
    device = torch_device()
    model = torch_model(qcfg, args.dtype, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(0)
    tokens = torch.from_numpy(rng.integers(0, qcfg.vocab_size, (args.batch, args.seq)).astype(np.int64))
    tokens = tokens.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        print(f"  torch step {i}: {dt:.3f}s loss {out.loss.item():.3f}", flush=True)
    return args.batch * args.seq / statistics.median(times)


def _child(args, side: str) -> float:
    """Run one side in a fresh interpreter; its last line is TOKENS_PER_S <x>."""
    import subprocess
    argv = [a for a in sys.argv[1:] if not a.startswith("--side")]
    env = dict(os.environ)
    if side == "torch":
        # torch's OpenMP threads spin-wait by default, which collapses on a shared/loaded CPU
        # (5-20 s per step measured here); passive waiting is its best setting there.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f"--side={side}"],
                          stdout=subprocess.PIPE, text=True, check=False, env=env)
    lines = proc.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(line, flush=True)
    if proc.returncode != 0 or not lines or not lines[-1].startswith("TOKENS_PER_S "):
        raise SystemExit(f"benchmark side {side!r} failed (exit {proc.returncode})")
    return float(lines[-1].split()[1])


def main() -> None:
    from cure_jax.config import LearnerConfig
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=4)
    p.add_argument("--chunk", type=int, default=LearnerConfig.logprob_chunk,
                   help="log-prob head chunk (default: learner.logprob_chunk's default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", default="none")
    p.add_argument("--preset", default="")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--mfu", action="store_true", help="GPU: report MFU of our step only")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak of one chip")
    p.add_argument("--malloc", default="keep", choices=["keep", "default"],
                   help="glibc's allocator on both sides: keep freed memory for the next step, as "
                        "cure-train does with learner.cpu_keep_freed_memory (cure_jax.host_malloc), "
                        "or glibc's defaults")
    p.add_argument("--side", default="both", choices=["both", "ours", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    qcfg = model_shape(args)
    n_params = qcfg.num_params()
    if args.side != "both" and args.malloc == "keep":
        from cure_jax import host_malloc
        host_malloc.keep_freed_memory_on_cpu(n_params)
    if args.side != "both":
        tps = bench_ours(args, qcfg) if args.side == "ours" else bench_torch(args, qcfg)
        print(f"TOKENS_PER_S {tps}", flush=True)
        return
    print(f"model: {n_params / 1e6:.1f}M params, batch {args.batch} x seq {args.seq}, {args.dtype}", flush=True)
    if args.mfu:
        ours = bench_ours(args, qcfg)
    else:
        ours = _child(args, "ours")
    print(f"ours: {ours:.1f} tokens/s", flush=True)
    if args.mfu:
        mfu = ours * flops_per_token(qcfg, args.seq) / (args.peak_tflops * 1e12)
        print(f"RESULT learner_mfu ours={mfu:.4f} baseline=0.40 ratio={mfu / 0.40:.3f}")
        return
    base = _child(args, "torch")
    print(f"torch: {base:.1f} tokens/s", flush=True)
    print(f"RESULT learner_vs_torch ours={ours:.1f} baseline={base:.1f} ratio={ours / base:.3f}")


if __name__ == "__main__":
    main()
