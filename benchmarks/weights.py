"""Weight sync of a ~0.5 GB policy: ours (in memory) vs memcpy and vs disk + engine rebuild.

Ours, as cure-train does it every step: the learner process (JAX) writes its params through
the one HF mapping table (``cure_jax.hf_io.write_hf_arrays``) straight into the shared-memory
WeightChannel (one copy per byte); the rollout process (vLLM, in-process CPU engine) maps the
channel with zero copies and pushes the tensors into the running engine (``reload_weights``
with one OpenMP thread, tied-head refresh, prefix-cache reset; see rollout/engines/vllm_worker).
One extra push runs under cProfile to show where the push time goes.

Baselines measured in the same run, on the same bytes:
- memcpy: one ``np.copyto`` of a buffer of the same size (the bandwidth ceiling);
- the reference's way: save a HF checkpoint to disk (safetensors) and build a new vLLM engine
  from it.

    python benchmarks/weights.py [--hidden 1024 --layers 10 --vocab 4096] [--repeats 3]
    python benchmarks/weights.py --tiny-run   # also: step-time breakdown of a tiny cure-train run

Prints ``RESULT weights_vs_memcpy ours=<GB/s> baseline=<GB/s> ratio=<ours/baseline>`` and
``RESULT weights_vs_disk_rebuild ours=<s> baseline=<s> ratio=<baseline/ours>``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def engine_options(model_dir: str) -> dict:
    return {"backend": "vllm", "model": model_dir, "dtype": "float32", "enforce_eager": True,
                "distributed_executor_backend": "uni", "in_process": True, "max_model_len": 256,
                "gpu_memory_utilization": 0.5, "seed": 0, "kv_cache_gb": 1}


# ----------------------------------------------------------------------------- rollout side
def worker(model_dir: str, fd: int) -> None:
    """The vLLM process: JSON commands on stdin, one JSON reply per line on ``fd``."""
    from rollout.contract.weight_channel import WeightChannel
    from rollout.engines import SamplingConfig, make_engine, push_from_channel

    out = os.fdopen(fd, "w")

    def reply(**kw):
        out.write(json.dumps(kw) + "\n")
        out.flush()

    t0 = time.perf_counter()
    eng = make_engine(engine_options(model_dir))
    reply(op="ready", build_s=time.perf_counter() - t0)
    greedy = SamplingConfig(temperature=0, max_tokens=8, logprobs=False)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "push":
            ch = WeightChannel.attach(cmd["channel"])
            t0 = time.perf_counter()
            v = push_from_channel(eng, ch, min_version=cmd["version"])
            dt = time.perf_counter() - t0
            ch.close()
            reply(op="pushed", version=v, push_s=dt,
                  sample=eng.generate([[5, 6, 7, 8]], 1, greedy)[0][0].token_ids)
        elif cmd["op"] == "profile_push":  # one more push under cProfile: where the time goes
            import cProfile
            import pstats

            ch = WeightChannel.attach(cmd["channel"])
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.runcall(push_from_channel, eng, ch, cmd["version"])
            total = time.perf_counter() - t0
            ch.close()
            parts = {"repack": 0.0, "copy": 0.0}
            for (_, _, fn), (_, _, tt, _, _) in pstats.Stats(prof).stats.items():
                if "create_onednn_mm_handler" in fn or "convert_weight_packed" in fn:
                    parts["repack"] += tt
                elif "copy_" in fn or fn == "<built-in method torch._ops.aten.>":
                    parts["copy"] += tt
            reply(op="profiled", total_s=total, **parts)
        elif cmd["op"] == "rebuild":
            t0 = time.perf_counter()
            eng.close()
            del eng
            import gc

            gc.collect()
            eng = make_engine(engine_options(cmd["dir"]))
            dt = time.perf_counter() - t0
            reply(op="rebuilt", rebuild_s=dt,
                  sample=eng.generate([[5, 6, 7, 8]], 1, greedy)[0][0].token_ids)
        elif cmd["op"] == "stop":
            eng.close()
            reply(op="bye")
            return


class Worker:
    def __init__(self, model_dir: str) -> None:
        r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", model_dir, str(w)],
                                     stdin=subprocess.PIPE, pass_fds=(w,), text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
        os.close(w)
        self.replies = os.fdopen(r, "r")
        self.ready = self.recv()

    def recv(self) -> dict:
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"benchmark worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.recv()

    def close(self) -> None:
        try:
            self.call(op="stop")
        finally:
            self.proc.wait(timeout=60)


# ----------------------------------------------------------------------------- learner side
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny-run", action="store_true",
                    help="also run a 3-step tiny cure-train and print its step-time breakdown")
    args = ap.parse_args()

    import numpy as np
    from flax import nnx

    from cure_jax import hf_io
    from cure_jax.models.qwen import Qwen, QwenConfig
    from rollout.contract.weight_channel import WeightChannel
    from rollout.random_policy import ensure_random_policy_dir

    cfg = QwenConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                     intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                     num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 256),
                     head_dim=64, family="qwen2", rope_theta=10000.0, max_position_embeddings=256,
                     torch_dtype="float32")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cure-bench-weights-"))
    hf = cfg.to_hf_dict()
    model_dir = ensure_random_policy_dir(tmp / "base", hf, seed=0)
    model = Qwen(cfg, rngs=nnx.Rngs(1))  # the learner's params (differ from the base dir's)
    specs = hf_io.hf_specs(cfg, np.float32)
    nbytes = sum(int(np.prod(s)) * 4 for _, s, _ in specs)
    print(f"model: {cfg.num_params() / 1e6:.0f}M params, {nbytes / 1e9:.3f} GB float32 "
          f"({len(specs)} tensors)", flush=True)

    # memcpy ceiling
    src = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t = []
    for _ in range(max(3, args.repeats)):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        t.append(time.perf_counter() - t0)
    memcpy_gbs = nbytes / min(t) / 1e9
    del src, dst

    w = Worker(str(model_dir))
    print(f"vLLM engine built in {w.ready['build_s']:.1f}s", flush=True)
    ch = WeightChannel.create(f"benchw{os.getpid()}", WeightChannel.required_capacity(specs))
    ours = []
    try:
        for v in range(1, args.repeats + 1):
            t0 = time.perf_counter()
            with ch.writer(version=v) as wr:  # as cure-train's export_weights does
                hf_io.write_hf_arrays(model, wr, np.float32)
            t_export = time.perf_counter() - t0
            rep = w.call(op="push", channel=ch.name, version=v)
            total = t_export + rep["push_s"]
            ours.append(total)
            print(f"  sync {v}: export+channel {t_export:.3f}s push {rep['push_s']:.3f}s "
                  f"= {total:.3f}s ({nbytes / total / 1e9:.2f} GB/s)", flush=True)
        sample_ours = rep["sample"]
        with ch.writer(version=args.repeats + 1) as wr:
            hf_io.write_hf_arrays(model, wr, np.float32)
        prof = w.call(op="profile_push", channel=ch.name, version=args.repeats + 1)
        print(f"  push under cProfile {prof['total_s']:.3f}s: oneDNN repacking "
              f"{prof['repack']:.3f}s, tensor copies {prof['copy']:.3f}s, rest (vLLM's reload "
              f"bookkeeping, prefix-cache reset, profiler) "
              f"{prof['total_s'] - prof['repack'] - prof['copy']:.3f}s", flush=True)
        # Reference way: save a HF checkpoint to disk, build a new engine from it.
        disk_dir = tmp / "step"
        t0 = time.perf_counter()
        hf_io.save_hf_dir(model, disk_dir, dtype=np.float32, base_hf_dir=model_dir)
        t_save = time.perf_counter() - t0
        rep = w.call(op="rebuild", dir=str(disk_dir))
        t_disk = t_save + rep["rebuild_s"]
        print(f"  disk: save {t_save:.3f}s + new engine {rep['rebuild_s']:.3f}s = {t_disk:.3f}s",
              flush=True)
        if rep["sample"] != sample_ours:
            raise SystemExit(f"greedy output differs between pushed ({sample_ours}) and rebuilt "
                             f"({rep['sample']}) weights: the push is wrong")
    finally:
        ch.close()
        w.close()
    best = min(ours)
    ours_gbs = nbytes / best / 1e9
    print(f"ours {ours_gbs:.2f} GB/s (best of {len(ours)}), memcpy {memcpy_gbs:.2f} GB/s, "
          f"disk+rebuild {t_disk:.2f}s vs ours {best:.3f}s")
    print(f"RESULT weights_vs_memcpy ours={ours_gbs:.3f} baseline={memcpy_gbs:.3f} "
          f"ratio={ours_gbs / memcpy_gbs:.3f}")
    print(f"RESULT weights_vs_disk_rebuild ours={best:.3f} baseline={t_disk:.3f} "
          f"ratio={t_disk / best:.1f}")
    if args.tiny_run:
        tiny_breakdown(tmp / "tiny-run")


def tiny_breakdown(workdir: pathlib.Path) -> None:
    """Run cure-train on configs/tiny.py for 3 steps and print the mean step-time breakdown."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "cure_jax.train_main", f"--config={REPO / 'configs/tiny.py'}",
           f"--workdir={workdir}", "--config.train.steps=3", "--config.train.eval_every=0"]
    subprocess.run(cmd, check=True, cwd=str(REPO), env=env)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(workdir / "tb"))
    acc.Reload()
    tags = ["time/generate_s", "time/sandbox_s", "time/rewards_s", "time/learn_s", "time/sync_s",
            "time/step_s"]
    parts = []
    for tag in tags:
        vals = [e.value for e in acc.Scalars(tag)][1:] or [e.value for e in acc.Scalars(tag)]
        parts.append(f"{tag.split('/')[1][:-2]} {sum(vals) / len(vals):.2f}s")
    print("tiny run step time (mean of steps 2-3): " + ", ".join(parts))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        main()
