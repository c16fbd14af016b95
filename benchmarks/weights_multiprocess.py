"""Weight export per step with the learner over 1 vs 2 processes (`jax.distributed`, gloo).

What each host pays after every update to hand its local rollout engine the whole policy:
``cure_jax.weight_export.export_weights`` of a Qwen2-shaped fp32 model into a WeightChannel
(shared memory), the parameters sharded FSDP over 4 CPU devices:

- baseline: one process with 4 fake devices (no re-shard: each shard is copied straight into
  the channel);
- ours: two processes with 2 fake devices each, joined by ``jax.distributed`` (gloo); the
  parameters span both, so each process first re-shards them to a whole copy per host
  (``sharding.host_local_shardings``, one jitted call) and then copies its own shards into
  its own channel. Also measured there: the re-shard alone, and the previous way (one
  ``process_allgather`` per parameter) for comparison.

Each side runs in its own child processes; per step the median of --repeats exports after a
warm-up (in 2 processes a step counts until the slower process is done).

    python benchmarks/weights_multiprocess.py [--hidden 512 --layers 8 --vocab 8192] [--repeats 5]

Prints ``RESULT weights_export_2proc_vs_1proc ours=<2-proc s> baseline=<1-proc s>
ratio=<ours/baseline>`` last.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", choices=["run"], help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- child side
def model_config(args: argparse.Namespace):
    from cure_jax.models.qwen import QwenConfig
    return QwenConfig(family="qwen2", vocab_size=args.vocab, hidden_size=args.hidden,
                      intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      head_dim=args.hidden // args.heads, rope_theta=10000.0,
                      attention_impl="xla")


def timed(fn, repeats: int, sync) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` after one warm-up; `sync()` before each."""
    fn()
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def child(args: argparse.Namespace) -> None:
    """One process of a side: build the learner, time the exports, print one JSON line."""
    from cure_jax import distributed
    distributed.initialize()
    import jax

    from cure_jax import hf_io, sharding
    from cure_jax.config import LearnerConfig
    from cure_jax.learner import make_learner
    from cure_jax.weight_export import (
        export_weights,
        host_local_params,
        weights_capacity,
    )
    from rollout.contract.weight_channel import WeightChannel

    learner = make_learner(model_config(args), LearnerConfig(),
                           sharding.make_mesh(data=1, fsdp=-1, tp=1), seed=0)
    params = learner.init_state().params
    nparams = sum(x.size for x in jax.tree.leaves(params))
    ch = WeightChannel.create(f"bwx{os.getpid()}", weights_capacity(learner.model_cfg, "float32"))
    out = {"process": jax.process_index(), "processes": jax.process_count(),
           "params": int(nparams)}
    try:
        out["nbytes"] = export_weights(learner, params, ch, 0, "float32")
        out["export_s"] = timed(lambda: export_weights(learner, params, ch, 1, "float32"),
                                args.repeats, _sync)
        if jax.process_count() > 1:
            f32 = hf_io.parse_dtype("float32")
            out["reshard_s"] = timed(lambda: jax.block_until_ready(
                host_local_params(params, learner.mesh, f32)), args.repeats, _sync)
            out["allgather_s"] = timed(lambda: _write(learner, params, ch), args.repeats, _sync)
    finally:
        ch.close()
    print("BENCH " + json.dumps(out), flush=True)


def _sync() -> None:
    """All processes at the same point before a timed call (no-op in one process)."""
    from cure_jax import distributed
    distributed.barrier("step")


def _write(learner, params, ch) -> None:
    """The previous multi-process export: one process_allgather per parameter."""
    from cure_jax import hf_io
    with ch.writer(2) as w:
        hf_io.write_hf_arrays(learner.model(params), w, hf_io.parse_dtype("float32"),
                              cfg=learner.model_cfg)


# ----------------------------------------------------------------------------- parent side
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_side(nproc: int, devices_per_proc: int, argv: list[str]) -> list[dict]:
    """Start `nproc` children (one jax.distributed job when nproc > 1); their JSON reports."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_proc}")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    port = free_port()
    procs = []
    for i in range(nproc):
        e = dict(env)
        if nproc > 1:
            e.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(nproc),
                     JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", "run", *argv],
                                      env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        lines = [ln for ln in out.splitlines() if ln.startswith("BENCH ")]
        if p.returncode or not lines:
            raise RuntimeError(f"child failed (rc {p.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
        reports.append(json.loads(lines[-1][6:]))
    return reports


def step_median(reports: list[dict], key: str) -> float:
    """Median over repeats of the slowest process's seconds."""
    import statistics
    per_rep = [max(vals) for vals in zip(*(r[key] for r in reports))]
    return statistics.median(per_rep)


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    argv = list(sys.argv[1:])
    one = run_side(1, 4, argv)
    two = run_side(2, 2, argv)
    nbytes = one[0]["nbytes"]
    base, ours = step_median(one, "export_s"), step_median(two, "export_s")
    print(f"model: {one[0]['params'] / 1e6:.1f}M params, {nbytes / 1e9:.3f} GB fp32, "
          f"FSDP over 4 CPU devices; median of {args.repeats} after a warm-up")
    print(f"1 process x 4 devices:  export {base:.4f} s ({nbytes / base / 1e9:.3f} GB/s) "
          f"all: {[round(t, 4) for t in one[0]['export_s']]}")
    print(f"2 processes x 2 devices: export {ours:.4f} s ({nbytes / ours / 1e9:.3f} GB/s), "
          f"of which re-shard {step_median(two, 'reshard_s'):.4f} s; previous way "
          f"(process_allgather per parameter) {step_median(two, 'allgather_s'):.4f} s")
    print(f"RESULT weights_export_2proc_vs_1proc ours={ours:.4f} baseline={base:.4f} "
          f"ratio={ours / base:.3f}")


if __name__ == "__main__":
    main()
