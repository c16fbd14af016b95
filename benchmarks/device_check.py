"""One-shot check of cure-jax on one NVIDIA GPU (H100 / H200): numerics, speed, the whole loop.

Every section runs in its own child process with its own time limit, so a crash or a hang in
one does not lose the others; each prints ``RESULT <name> ours=<x> baseline=<y> ratio=<r>``
with a baseline measured in the same run:

  parity     bf16 logits of our Flax Qwen (weights moved in through the one HF table) vs
             transformers' Qwen2ForCausalLM at the Qwen2.5-0.5B shape, random weights, 4 x 256
             tokens: max |logit - fp32 torch logit|, ours (Flax bf16) vs baseline (torch bf16).
  learner    our Learner step (bf16 compute, fp32 master weights, remat) at the Qwen2.5-1.5B
             shape, 8 x 1024 tokens: tokens/s and MFU vs a plain torch/transformers bf16 step.
  weights    weight sync of a ~1.5B policy: learner params -> WeightChannel (/dev/shm, bf16)
             -> the hf engine's model on the GPU, vs per-parameter np.asarray +
             torch.from_numpy().cuda(): GB/s.
  cure       3 CURE steps of configs/tiny.py through cure-train, the hf engine on the GPU:
             seconds per steady step (steps 2-3) vs the first step (which includes warm-up).
  attention  the Learner step at the Qwen2.5-0.5B shape and seq 2048 with cuDNN flash
             attention vs XLA's attention: seconds per step, ratio = xla / cudnn.

A section that fails prints ``SECTION <name> FAILED: <reason>`` and the check goes on; the exit
status is 1 when any failed. With OUT set (an optional output directory) the output is also
written to $OUT/device_check.log and the results to $OUT/device_check.json, after each section.

On a GPU machine, with the repository and any missing pure-Python packages on PYTHONPATH
(nothing is installed by this script); the whole check keeps to --budget_s (470 s):

    PYTHONPATH=.:/tmp/site python3 benchmarks/device_check.py [--only parity,learner]

Without a GPU the same code runs with tiny shapes in a few minutes:

    python benchmarks/device_check.py --smoke        # or: make device-check DEVICE_CHECK_ARGS=--smoke
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from types import SimpleNamespace

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import device_sections

# In this order: the costliest and least essential (attention: two more compiles) runs last, so
# that if earlier sections run long, the budget cuts it rather than the end-to-end CURE run.
SECTIONS = ("parity", "learner", "weights", "cure", "attention")
# Shapes and step counts on the GPU. --smoke shrinks every one of them (SMOKE below).
GPU = {
    "parity_shape": "qwen2.5-0.5b-instruct", "parity_batch": 4, "parity_seq": 256,
    "learner_shape": "qwen2.5-1.5b-instruct", "learner_batch": 8, "learner_seq": 1024,
    "learner_warmup": 2, "learner_steps": 5,
    "attn_shape": "qwen2.5-0.5b-instruct", "attn_batch": 4, "attn_seq": 2048,
    "attn_warmup": 1, "attn_steps": 3,
    "remat": "dots_with_no_batch_dims_saveable",  # as configs/qwen2_5_7b.py
    "chunk": 256,  # log-prob head: sequence positions per chunk of [B, C, vocab] logits
    "weights_shape": "qwen2.5-1.5b-instruct", "weights_repeats": 3,
    "cure_steps": 3, "cure_overrides": [],  # configs/tiny.py as it is, but for the hf engine
}
SMOKE = {**GPU, "parity_shape": "tiny", "parity_batch": 2, "parity_seq": 64,
         "learner_shape": "tiny", "learner_batch": 2, "learner_seq": 64, "learner_warmup": 1,
         "learner_steps": 2, "attn_shape": "tiny", "attn_batch": 2, "attn_seq": 64,
         "attn_warmup": 1, "attn_steps": 2, "chunk": 32, "weights_shape": "tiny",
         "weights_repeats": 2, "cure_steps": 2,
         "cure_overrides": ["--config.rollout.problems_per_step=2", "--config.rollout.k_code=4",
                            "--config.rollout.k_case=4", "--config.rollout.max_tokens=64"]}
# Seconds each section may take (its child process is killed after that), and the whole
# check's budget: sections that would start after it are reported as failed, not run.
TIMEOUT_S = {"env": 60, "parity": 100, "learner": 220, "weights": 90, "cure": 200, "attention": 150}
SMOKE_TIMEOUT_S = {"env": 300, "parity": 400, "learner": 600, "attention": 600, "weights": 400,
                   "cure": 900}
BUDGET_S = 470
NO_PREALLOCATE = ("env", "parity", "weights", "cure")  # JAX shares the GPU with torch there
RESULT_RE = re.compile(r"^RESULT (\S+) ours=(\S+) baseline=(\S+) ratio=(\S+)")


def sizes(smoke: bool) -> SimpleNamespace:
    table = SMOKE if smoke else GPU
    return SimpleNamespace(**table, smoke=smoke)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


class Report:
    """Prints every line and, with an output directory, appends it to the log and rewrites
    the JSON of results after each section (partial results survive a kill)."""

    def __init__(self, out_dir: str | None, meta: dict) -> None:
        self.dir = pathlib.Path(out_dir) if out_dir else None
        self.data = {**meta, "sections": {}}
        self.log = None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.log = open(self.dir / "device_check.log", "a", buffering=1)  # noqa: SIM115 - held to the end

    def line(self, text: str) -> None:
        print(text, flush=True)
        if self.log is not None:
            self.log.write(text + "\n")

    def section(self, name: str, record: dict) -> None:
        self.data["sections"][name] = record
        if self.dir is not None:
            tmp = self.dir / "device_check.json.tmp"
            tmp.write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.dir / "device_check.json")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def run_section(name: str, smoke: bool, timeout: float, report: Report) -> dict:
    """Run one section in a child process; returns its record (status, results, metrics)."""
    record: dict = {"status": "running", "results": {}, "metrics": {}}
    last = [""]

    def on_line(line: str) -> None:
        report.line(line)
        if line.strip():
            last[0] = line.strip()
        m = RESULT_RE.match(line)
        if m:
            record["results"][m.group(1)] = {"ours": _number(m.group(2)),
                                             "baseline": _number(m.group(3)),
                                             "ratio": _number(m.group(4))}
        elif line.startswith("METRIC "):
            for item in line[7:].split():
                k, _, v = item.partition("=")
                record["metrics"][k] = _number(v)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    if name in NO_PREALLOCATE:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "")
                                                       .split(os.pathsep) if p])
    report.line(f"=== {name} (limit {timeout:.0f}s)")
    t0 = time.perf_counter()
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--section={name}"]
    rc, timed_out = device_sections.stream(cmd + (["--smoke"] if smoke else []), on_line,
                                           env=env, cwd=str(REPO), timeout=timeout, new_group=True)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    if timed_out:
        record["reason"] = f"timed out after {timeout:.0f}s"
    elif rc != 0:
        record["reason"] = f"exited with status {rc}: {last[0][:300]}"
    elif name != "env" and not record["results"]:
        record["reason"] = "no RESULT line"
    record["status"] = "failed" if "reason" in record else "ok"
    if record["status"] == "failed":
        report.line(f"SECTION {name} FAILED: {record['reason']}")
    else:
        report.line(f"=== {name} ok in {record['seconds']:.0f}s")
    return record


def gpu_names() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30,
                             check=False)
        return out.stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        return "none (no nvidia-smi)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes: runs on a CPU in minutes")
    p.add_argument("--only", default="", help=f"comma-separated sections of {','.join(SECTIONS)}")
    p.add_argument("--budget_s", type=float, default=None,
                   help=f"time for the whole check (default {BUDGET_S}; none with --smoke)")
    p.add_argument("--section", default="", help=argparse.SUPPRESS)  # run one section here
    args = p.parse_args()
    if args.section:
        device_sections.SECTIONS[args.section](sizes(args.smoke))
        return 0
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    budget = args.budget_s if args.budget_s is not None else (0 if args.smoke else BUDGET_S)
    timeouts = SMOKE_TIMEOUT_S if args.smoke else TIMEOUT_S
    gpu = gpu_names()
    report = Report(os.environ.get("OUT"), {
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "smoke": args.smoke,
        "gpu": gpu, "sections_chosen": chosen, "sizes": vars(sizes(args.smoke))})
    report.line(f"device_check: GPU {gpu} | sections {','.join(chosen)} | "
                f"{'smoke (tiny shapes)' if args.smoke else 'full shapes'} | budget "
                f"{f'{budget:.0f}s' if budget else 'none'}")
    start = time.perf_counter()
    failed = []
    env_ok = True
    for name in ["env"] + chosen:
        left = budget - (time.perf_counter() - start) if budget else float("inf")
        if not env_ok:
            record = {"status": "failed", "reason": "the env section failed"}
        elif left < 20:
            record = {"status": "failed", "reason": f"no time left in the {budget:.0f}s budget"}
        else:
            report.section(name, {"status": "running"})  # the JSON says which one was cut off
            record = run_section(name, args.smoke, min(timeouts[name], left), report)
        if record["status"] == "failed":
            if "seconds" not in record:
                report.line(f"SECTION {name} FAILED: {record['reason']}")
            failed.append(name)
            env_ok = env_ok and name != "env"
        report.section(name, record)
    report.line(f"device_check: {len(chosen) + 1 - len(failed)} of {len(chosen) + 1} sections "
                f"ok in {time.perf_counter() - start:.0f}s" + (f"; failed: {','.join(failed)}"
                                                               if failed else ""))
    for rec in report.data["sections"].values():  # a summary (not RESULT lines: no duplicates)
        for rname, r in rec.get("results", {}).items():
            report.line(f"  {rname}: ours={r['ours']} baseline={r['baseline']} ratio={r['ratio']}")
    report.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
