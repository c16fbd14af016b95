"""The sections of benchmarks/device_check.py; each runs in its own child process.

A section prints ``RESULT <name> ours=<x> baseline=<y> ratio=<r>`` lines (a figure beside a
baseline measured in the same run) and optional ``METRIC key=value`` lines; a part (a piece of
a section that needs a process of its own, e.g. the torch side of the learner benchmark) ends
with one ``PART {json}`` line. Shapes and step counts come from `sz` (device_check's sizes).
"""
from __future__ import annotations

import gc
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DEVICE_CHECK = REPO / "benchmarks" / "device_check.py"
PEAK_TFLOPS = 989.0  # dense bf16 peak of one H100 SXM (the H200 has the same compute)
SHM_DIR = "/dev/shm"
# --smoke: a tiny Qwen2 (tied embeddings like the small Qwen2.5 models) that runs on a CPU.
TINY = {"family": "qwen2", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "tie_word_embeddings": True, "rope_theta": 1_000_000.0, "max_position_embeddings": 4096}


# ------------------------------------------------------------------------------- plumbing
def stream(cmd: list[str], on_line: Callable[[str], None], *, env: dict | None = None,
           cwd: str | None = None, timeout: float | None = None,
           new_group: bool = False) -> tuple[int | None, bool]:
    """Run `cmd` (stdout + stderr merged), hand each output line to `on_line` as it comes.

    Returns (exit status, timed out). With `new_group` the child leads a new process group,
    which a timeout ends (SIGTERM, then SIGKILL), with whatever it started in the group.
    Without, it stays in ours, so a timeout of ours ends it too (no timeout of its own)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, env=env, cwd=cwd,
                            start_new_session=new_group)

    def pump() -> None:
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout if new_group else None)
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=10)
    return proc.returncode, timed_out


def run_part(name: str, sz: SimpleNamespace) -> dict:
    """Run part `name` of a section in a fresh interpreter; its output streams through."""
    found: list[dict] = []

    def on_line(line: str) -> None:
        if line.startswith("PART "):
            found.append(json.loads(line[5:]))
        else:
            print(line, flush=True)
    cmd = [sys.executable, str(DEVICE_CHECK), f"--section={name}"] + (["--smoke"] if sz.smoke else [])
    rc, _ = stream(cmd, on_line)
    if rc != 0 or not found:
        raise RuntimeError(f"part {name} exited {rc}" + ("" if found else " without a PART line"))
    return found[-1]


def part(**values) -> None:
    print("PART " + json.dumps(values), flush=True)


def result(name: str, ours: float, baseline: float, ratio: float) -> None:
    print(f"RESULT {name} ours={ours:.6g} baseline={baseline:.6g} ratio={ratio:.4g}", flush=True)


def metric(**values) -> None:
    print("METRIC " + " ".join(f"{k}={v}" for k, v in values.items()), flush=True)


def shape(name: str, **overrides):
    """The QwenConfig of `name`: "tiny" (smoke), a Qwen2.5 shape of benchmarks/learner.py or a preset."""
    from benchmarks.learner import preset_shape
    from cure_jax.models.qwen import QwenConfig
    if name == "tiny":
        return QwenConfig(**{**TINY, **overrides})
    return preset_shape(name, **overrides)


def _describe(qcfg, what: str, knobs: bool = True) -> None:
    print(f"{what}: {qcfg.num_params() / 1e9:.3f}B params (hidden {qcfg.hidden_size}, "
          f"{qcfg.num_hidden_layers} layers, {qcfg.num_attention_heads}/{qcfg.num_key_value_heads} "
          f"heads x {qcfg.head_dim}, vocab {qcfg.vocab_size}, tied {qcfg.tie_word_embeddings}"
          + (f", attention {qcfg.attention_impl}, remat {qcfg.remat_policy})" if knobs else ")"),
          flush=True)


def _scratch_dir(need_bytes: int) -> str:
    """A temporary directory in /dev/shm when it has room, else in the default temp dir."""
    base = SHM_DIR if (os.path.isdir(SHM_DIR)
                       and shutil.disk_usage(SHM_DIR).free > 2 * need_bytes) else None
    return tempfile.mkdtemp(prefix="devchk-", dir=base)


# ------------------------------------------------------------------------------- env
def env(sz: SimpleNamespace) -> None:
    import flax
    import jax
    import torch
    import transformers
    print(f"python {sys.version.split()[0]} | jax {jax.__version__} | flax {flax.__version__} | "
          f"torch {torch.__version__} | transformers {transformers.__version__}", flush=True)
    print(f"jax backend {jax.default_backend()}: {jax.devices()}", flush=True)
    cuda = torch.cuda.is_available()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        print(f"torch cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}: "
              f"{props.name}, {props.total_memory / 2**30:.1f} GiB", flush=True)
    else:
        print("torch: no CUDA device, running on cpu", flush=True)
    metric(jax=jax.__version__, flax=flax.__version__, torch=torch.__version__,
           transformers=transformers.__version__, jax_backend=jax.default_backend(),
           gpu=(torch.cuda.get_device_name(0).replace(" ", "_") if cuda else "none"))
    if cuda and jax.default_backend() != "gpu":
        raise SystemExit("torch sees a CUDA GPU but JAX does not (is the CUDA plugin installed?)")


# ------------------------------------------------------------------------------- parity
def parity(sz: SimpleNamespace) -> None:
    """bf16 logits of our Flax model vs transformers, both against transformers in fp32."""
    import copy

    import jax
    import jax.numpy as jnp
    import torch
    import transformers
    from flax import nnx

    from benchmarks.learner import torch_device, torch_model
    from cure_jax import hf_io
    torch.set_float32_matmul_precision("highest")  # the fp32 reference: no TF32
    dev = torch_device()
    qcfg = shape(sz.parity_shape)
    _describe(qcfg, "parity model")
    torch.manual_seed(0)
    gold_model = torch_model(qcfg, "float32", dev).eval()
    with torch.no_grad():
        for name, p in gold_model.named_parameters():
            # HF starts biases at 0 and norm scales at 1: randomise them so they count
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            p.copy_(p.to(torch.bfloat16).float())  # bf16-exact: every model holds the same weights
    low_model = copy.deepcopy(gold_model).to(torch.bfloat16)
    transformers.utils.logging.disable_progress_bar()
    hf_dir = _scratch_dir(2 * qcfg.num_params())
    try:
        low_model.save_pretrained(hf_dir)
        # into Flax through the one HF table (streamed safetensors import), fp32 master
        # weights and bf16 compute, as the learner runs
        tokens = np.random.default_rng(0).integers(0, qcfg.vocab_size,
                                                   (sz.parity_batch, sz.parity_seq))

        def run(impl: str) -> np.ndarray:
            model = hf_io.load_model(hf_dir, param_dtype=jnp.float32, dtype=jnp.bfloat16,
                                     attention_impl=impl)
            t0 = time.perf_counter()
            out = nnx.jit(lambda m, t: m.logits(m(t)))(model, jnp.asarray(tokens, jnp.int32))
            out = np.asarray(out)
            print(f"flax forward (with compile) {time.perf_counter() - t0:.1f}s on "
                  f"{jax.default_backend()}, attention {impl} (auto: cudnn on a GPU in bf16, "
                  "else xla)", flush=True)
            return out
        ours = _auto_else_xla(run, "parity")
    finally:
        shutil.rmtree(hf_dir, ignore_errors=True)
    ids = torch.from_numpy(tokens.astype(np.int64)).to(dev)
    with torch.no_grad():
        gold = gold_model(input_ids=ids).logits.float().cpu().numpy()
        del gold_model
        base = low_model(input_ids=ids).logits.float().cpu().numpy()
    gold_top = gold.argmax(-1)

    def compare(x: np.ndarray) -> tuple[float, float, float]:
        d = np.abs(x - gold)
        return float(d.max()), float(d.mean()), float((x.argmax(-1) == gold_top).mean())
    o, b = compare(ours), compare(base)
    print(f"logits {tokens.shape} x {qcfg.vocab_size}: max |fp32 logit| {np.abs(gold).max():.3f}",
          flush=True)
    print(f"flax-bf16  vs torch-fp32: max {o[0]:.4g} mean {o[1]:.4g} top-1 agreement {o[2]:.4f}",
          flush=True)
    print(f"torch-bf16 vs torch-fp32: max {b[0]:.4g} mean {b[1]:.4g} top-1 agreement {b[2]:.4f}",
          flush=True)
    metric(ours_mean=f"{o[1]:.4g}", base_mean=f"{b[1]:.4g}", ours_top1=f"{o[2]:.4f}",
           base_top1=f"{b[2]:.4f}")
    result("parity_bf16", o[0], b[0], o[0] / max(b[0], 1e-30))
    if not np.isfinite(o[0]) or o[0] > 10 * b[0]:
        raise SystemExit(f"parity: flax bf16 error {o[0]:.4g} is over 10x torch bf16's {b[0]:.4g}")


# ------------------------------------------------------------------------------- learner
def _bench_args(sz: SimpleNamespace, prefix: str, **overrides) -> SimpleNamespace:
    """The argument namespace benchmarks/learner.py's bench_ours / bench_torch read."""
    g = lambda k: getattr(sz, f"{prefix}_{k}")
    args = {"batch": g("batch"), "seq": g("seq"), "chunk": sz.chunk, "dtype": "bfloat16",
            "warmup": g("warmup"), "steps": g("steps")}
    return SimpleNamespace(**{**args, **overrides})


def learner(sz: SimpleNamespace) -> None:
    """Our Learner step vs a plain torch/transformers step, each in its own process."""
    ours = run_part("learner_ours", sz)
    base = run_part("learner_torch", sz)
    print(f"MFU at a peak of {PEAK_TFLOPS:.0f} TFLOP/s (H100/H200 dense bf16): ours "
          f"{ours['mfu']:.4f}, torch {base['mfu']:.4f}" + (f" (torch at batch {base['batch']})"
                                                          if base["batch"] != sz.learner_batch else ""),
          flush=True)
    metric(mfu_ours=f"{ours['mfu']:.4f}", mfu_torch=f"{base['mfu']:.4f}", peak_tflops=PEAK_TFLOPS)
    result("learner_gpu_tokens", ours["tokens_per_s"], base["tokens_per_s"],
           ours["tokens_per_s"] / base["tokens_per_s"])


def _auto_else_xla(run: Callable[[str], object], what: str):
    """`run("auto")` (cuDNN attention on a GPU); should that raise on a GPU, `run("xla")`, so
    one broken kernel does not cost the other figures (the attention section tests cuDNN)."""
    import jax
    try:
        return run("auto")
    except Exception as e:
        if jax.default_backend() != "gpu":
            raise
        print(f"{what}: failed with attention 'auto' (cudnn): {str(e)[:400]!r}; retrying with "
              "'xla'", flush=True)
        metric(attention_fallback="xla")
        return run("xla")


def learner_ours(sz: SimpleNamespace) -> None:
    from benchmarks.learner import bench_ours, flops_per_token
    args = _bench_args(sz, "learner")

    def run(impl: str) -> tuple:
        qcfg = shape(sz.learner_shape, attention_impl=impl, remat_policy=sz.remat)
        _describe(qcfg, "learner (ours)")
        return qcfg, bench_ours(args, qcfg)
    qcfg, tps = _auto_else_xla(run, "learner")
    part(tokens_per_s=tps, mfu=tps * flops_per_token(qcfg, args.seq) / (PEAK_TFLOPS * 1e12),
         batch=args.batch)


def learner_torch(sz: SimpleNamespace) -> None:
    import torch

    from benchmarks.learner import bench_torch, flops_per_token
    qcfg = shape(sz.learner_shape)
    _describe(qcfg, "learner (torch baseline, sdpa attention, no remat)", knobs=False)
    args = _bench_args(sz, "learner")
    while True:
        try:
            tps = bench_torch(args, qcfg)
            break
        except torch.OutOfMemoryError:
            if args.batch == 1:
                raise
        # (out of the except block, so the failed step's tensors can be freed)
        args.batch //= 2  # torch keeps every activation: halve the batch, same tokens/s meaning
        print(f"torch: out of memory, retrying at batch {args.batch}", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    part(tokens_per_s=tps, mfu=tps * flops_per_token(qcfg, args.seq) / (PEAK_TFLOPS * 1e12),
         batch=args.batch)


# ------------------------------------------------------------------------------- attention
def attention(sz: SimpleNamespace) -> None:
    """The Learner step with cuDNN flash attention vs XLA's attention."""
    import jax

    from benchmarks.learner import bench_ours
    impls = {"cudnn": "cudnn", "xla": "xla"}
    if jax.default_backend() != "gpu":
        impls["cudnn"] = "xla"
        print("no GPU: cuDNN attention is unavailable, timing the xla path twice", flush=True)
    args = _bench_args(sz, "attn")
    step_s = {}
    for label, impl in impls.items():
        qcfg = shape(sz.attn_shape, attention_impl=impl, remat_policy=sz.remat)
        _describe(qcfg, f"attention {label}")
        step_s[label] = args.batch * args.seq / bench_ours(args, qcfg)
        gc.collect()
        print(f"{label}: {step_s[label]:.4f} s/step at batch {args.batch} x seq {args.seq}", flush=True)
    result("attention_cudnn_vs_xla", step_s["cudnn"], step_s["xla"], step_s["xla"] / step_s["cudnn"])


# ------------------------------------------------------------------------------- weights
def weights(sz: SimpleNamespace) -> None:
    """Learner params -> WeightChannel (shm) -> the hf engine's model on the torch device."""
    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks.learner import torch_device, torch_model
    from cure_jax import sharding
    from cure_jax.config import LearnerConfig
    from cure_jax.learner import make_learner
    from cure_jax.weight_export import export_weights, weights_capacity
    from rollout.contract.weight_channel import WeightChannel
    from rollout.engines import push_from_channel
    from rollout.engines.hf_engine import HFEngine
    qcfg = shape(sz.weights_shape)
    free = shutil.disk_usage(SHM_DIR).free
    while 2 * weights_capacity(qcfg, "bfloat16") > 0.8 * free and qcfg.num_hidden_layers > 1:
        qcfg = qcfg.replace(num_hidden_layers=qcfg.num_hidden_layers - 1)  # two buffers must fit
    _describe(qcfg, f"weights (/dev/shm has {free / 1e9:.1f} GB free)", knobs=False)
    mesh = sharding.make_mesh(data=1, fsdp=-1, tp=1)
    lrn = make_learner(qcfg, LearnerConfig(), mesh, param_dtype="float32", dtype="bfloat16", seed=0)
    params = lrn.init_state().params  # fp32 master weights, exported as bf16 (as cure-train does)
    dev = torch_device()
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    model = torch_model(qcfg, "bfloat16", dev).eval()
    # the hf engine's own load_weights (in-place copy into the running model), minus a checkpoint
    engine = HFEngine.__new__(HFEngine)
    engine.model, engine.config = model, SimpleNamespace(model="random policy")
    channel = WeightChannel.create(f"devchk{os.getpid()}", weights_capacity(qcfg, "bfloat16"))
    reader = WeightChannel.attach(channel.name)  # the rollout side maps the channel by name
    ours, base, nbytes = [], [], 0
    try:
        for v in range(1, sz.weights_repeats + 2):  # the first round compiles the casts
            t0 = time.perf_counter()
            nbytes = int(export_weights(lrn, params, channel, v, "bfloat16"))
            t1 = time.perf_counter()
            got = push_from_channel(engine, reader, min_version=v)
            sync()
            t2 = time.perf_counter()
            assert got == v, (got, v)
            if v > 1:
                ours.append(t2 - t0)
            print(f"  ours {v}: export {t1 - t0:.3f}s + push {t2 - t1:.3f}s = "
                  f"{nbytes / (t2 - t0) / 1e9:.2f} GB/s", flush=True)
        leaves = jax.tree.leaves(params)
        for r in range(sz.weights_repeats + 1):
            t0 = time.perf_counter()
            with warnings.catch_warnings():  # np.asarray of a jax array is read-only: fine here
                warnings.simplefilter("ignore", UserWarning)
                out = [torch.from_numpy(np.asarray(x.astype(jnp.bfloat16)).view(np.uint16))
                       .view(torch.bfloat16).to(dev, copy=True) for x in leaves]
            sync()
            dt = time.perf_counter() - t0
            if r > 0:
                base.append(dt)
            moved = sum(t.numel() * 2 for t in out)
            print(f"  baseline {r + 1}: {dt:.3f}s = {moved / dt / 1e9:.2f} GB/s", flush=True)
            del out
        assert moved == nbytes, (moved, nbytes)
        # the pushed model holds the learner's weights, bit for bit, in HF layout
        for mine, theirs in ((params["embed_tokens"], model.model.embed_tokens.weight),
                             (params["layers"]["self_attn"]["q_proj"][0],
                              model.model.layers[0].self_attn.q_proj.weight)):
            want = np.asarray(mine.astype(jnp.bfloat16)).view(np.uint16).reshape(tuple(theirs.shape))
            if not np.array_equal(want, theirs.detach().cpu().view(torch.int16).numpy().view(np.uint16)):
                raise SystemExit("weights: the pushed tensor differs from the learner's")
    finally:
        reader.close()
        channel.close()  # the owner unlinks the segment
    o, b = nbytes / min(ours) / 1e9, nbytes / min(base) / 1e9
    print(f"{nbytes / 1e9:.3f} GB bf16 to {dev}: ours {o:.2f} GB/s, per-param np.asarray + "
          f"torch copy {b:.2f} GB/s (best of {len(ours)})", flush=True)
    result("weights_gpu_push", o, b, o / b)


# ------------------------------------------------------------------------------- cure
def _step_times(workdir: pathlib.Path, console: list[float]) -> list[float]:
    """time/step_s of every step, from TensorBoard (exact) or else the console lines."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )
        acc = EventAccumulator(str(workdir / "tb"))
        acc.Reload()
        got = [e.value for e in sorted(acc.Scalars("time/step_s"), key=lambda e: e.step)]
        if got:
            return got
    except Exception as e:  # noqa: BLE001 - fall back to the console's one-decimal figures
        print(f"(step times from the console: {e!r})", flush=True)
    return console


def cure(sz: SimpleNamespace) -> None:
    """A few CURE steps of configs/tiny.py through cure-train, the hf engine on the same device."""
    import re

    from benchmarks.learner import torch_device
    device = torch_device()  # (no CUDA context is created here: cure-train's processes use the GPU)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="devchk-cure-"))
    cmd = [sys.executable, "-m", "cure_jax.train_main", f"--config={REPO / 'configs' / 'tiny.py'}",
           f"--workdir={workdir}", f"--config.train.steps={sz.cure_steps}",
           "--config.train.eval_every=0", "--config.train.checkpoint_every=0",
           "--config.train.histogram_every=0", "--config.train.text_every=0",
           "--config.rollout.engine=hf", f"--config.rollout.engine_options.device={device}",
           *sz.cure_overrides]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "")
                                                         .split(os.pathsep) if p]))
    console: list[float] = []
    step_line = re.compile(r"^step \d+/\d+ .* step ([0-9.]+)s")

    def on_line(line: str) -> None:
        print(line, flush=True)
        m = step_line.match(line)
        if m:
            console.append(float(m.group(1)))
    print(f"cure-train on {device}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    try:
        rc, _ = stream(cmd, on_line, env=env, cwd=str(REPO))
        wall = time.perf_counter() - t0
        if rc != 0:
            log = workdir / "rollout_server.log"
            if log.is_file():  # the server's own output goes there, not to ours
                tail = log.read_text(errors="replace").splitlines()[-30:]
                print("rollout_server.log (last lines):\n  " + "\n  ".join(tail), flush=True)
            raise SystemExit(f"cure-train exited {rc}")
        times = _step_times(workdir, console)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not times:
        raise SystemExit("cure-train printed no step")
    print("step times: " + ", ".join(f"{t:.2f}s" for t in times) + f" (wall {wall:.0f}s in all, "
          "with start-up)", flush=True)
    # Same-run baseline: the first step (it includes the learner's and the engine's warm-up:
    # XLA compiles, CUDA context, first generate); ours: the mean of the later, steady steps.
    ours = statistics.mean(times[1:]) if len(times) > 1 else times[0]
    metric(wall_s=f"{wall:.1f}", steps=len(times))
    result("cure_tiny_gpu_step", ours, times[0], times[0] / ours)


SECTIONS = {"env": env, "parity": parity, "learner": learner, "learner_ours": learner_ours,
            "learner_torch": learner_torch, "attention": attention, "weights": weights, "cure": cure}
