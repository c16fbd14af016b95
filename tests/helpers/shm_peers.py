"""Peers in other processes for the shared-memory tests (tests/rollout/contract): run ids,
child interpreters that import this checkout, waiting for segments to go, sample weights."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np

from rollout.contract.procs import pid_alive
from rollout.contract.segments import list_segments
from rollout.contract.weight_channel import BFLOAT16

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_id() -> str:
    """A fresh segment run id, so tests never see each other's segments."""
    return "t" + uuid.uuid4().hex[:10]


def spawn(code: str) -> subprocess.Popen:
    """``python -c code`` in a child that imports this checkout (and tests.helpers), with
    text pipes on stdin, stdout and stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_gone(run: str, timeout: float = 4.0) -> list[str]:
    """The run's segments still there after up to ``timeout`` seconds (empty once all gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = list_segments(run)
        if not left:
            return []
        time.sleep(0.05)
    return list_segments(run)


def segments_of(pid: int) -> list[str]:
    """This project's segments that process ``pid`` made, and those of a cure-train run it
    started (its run id is ``t<pid>x...``: the rollout server's own segments carry it)."""
    return [n for n in list_segments() if n.endswith(f"-{pid}") or n.startswith(f"cure-t{pid}x")]


def wait_dead(pids, timeout: float = 5.0) -> list[int]:
    """The pids still alive after up to ``timeout`` seconds (empty once all are gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if pid_alive(p)]
        time.sleep(0.05)
    return alive


def weights(seed: int) -> dict[str, np.ndarray]:
    """A few HF-named tensors of mixed dtypes (bfloat16 where ml_dtypes is installed)."""
    rng = np.random.default_rng(seed)
    return {"model.embed_tokens.weight": rng.standard_normal((64, 32)).astype(np.float32),
            "model.layers.0.self_attn.q_proj.bias": rng.standard_normal(32).astype(np.float32),
            "model.norm.weight": rng.standard_normal(32).astype(BFLOAT16 or np.float32),
            "position_ids": np.arange(17, dtype=np.int32)}
