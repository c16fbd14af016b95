"""Experience throughput: RolloutBuffer (shared-memory ring) vs a pickled multiprocessing.Queue.

A producer process sends ``--batches`` experience batches shaped like the DESIGN.md contract
(tokens int32 [N, L], rollout_logprobs float32 [N, L], per-row int32/float32/int8 fields) to
the consumer (this process), which takes its own copy of every array. Both transports move the
same bytes; the figure is GB/s of batch payload, end to end, including process hand-off.

    python benchmarks/buffer.py [--rows 256 --seq-len 4096 --batches 40 --slots 4]

Ends with ``RESULT buffer_vs_queue ours=<GB/s> baseline=<GB/s> ratio=<ours/baseline>``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rollout.contract.ring_buffer import RolloutBuffer


def make_batch(rows: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "tokens": rng.integers(0, 150_000, (rows, seq_len), dtype=np.int32),
        "rollout_logprobs": rng.standard_normal((rows, seq_len)).astype(np.float32),
        "prompt_len": np.full(rows, seq_len // 4, np.int32),
        "response_len": np.full(rows, seq_len // 2, np.int32),
        "advantage": rng.standard_normal(rows).astype(np.float32),
        "reward": rng.standard_normal(rows).astype(np.float32),
        "kind": (np.arange(rows) % 2).astype(np.int8),
        "problem_id": np.arange(rows, dtype=np.int32),
        "policy_version": np.zeros(rows, np.int32),
    }


def nbytes(batch: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in batch.values())


def _produce_shm(name: str, rows: int, seq_len: int, batches: int, ready) -> None:
    buf = RolloutBuffer.attach(name)
    buf.open_writer()
    b = make_batch(rows, seq_len, 0)
    ready.wait()
    for i in range(batches):
        buf.put(b, meta={"step": i}, version=i, timeout=120)
    buf.close_writer()
    buf.close()


def _produce_queue(q, rows: int, seq_len: int, batches: int, ready) -> None:
    b = make_batch(rows, seq_len, 0)
    ready.wait()
    for i in range(batches):
        q.put((b, {"step": i}, i))
    q.put(None)


def bench_shm(rows: int, seq_len: int, batches: int, slots: int) -> float:
    size = nbytes(make_batch(rows, seq_len, 0))
    buf = RolloutBuffer.create(f"bench{os.getpid()}", num_slots=slots,
                               slot_capacity=size + (1 << 16))
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_produce_shm, args=(buf.name, rows, seq_len, batches, ready))
    p.start()
    try:
        time.sleep(0.5)
        ready.set()
        t0 = time.perf_counter()
        for i in range(batches):
            got = buf.get(timeout=120)
            assert got.version == i and got.arrays["tokens"].shape == (rows, seq_len)
        dt = time.perf_counter() - t0
        p.join(60)
    finally:
        if p.is_alive():
            p.kill()
        buf.close()
    return batches * size / dt / 1e9


def bench_queue(rows: int, seq_len: int, batches: int) -> float:
    size = nbytes(make_batch(rows, seq_len, 0))
    ctx = mp.get_context("spawn")
    q, ready = ctx.Queue(maxsize=4), ctx.Event()
    p = ctx.Process(target=_produce_queue, args=(q, rows, seq_len, batches, ready))
    p.start()
    try:
        time.sleep(0.5)
        ready.set()
        t0 = time.perf_counter()
        for i in range(batches):
            arrays, _, version = q.get(timeout=120)
            assert version == i and arrays["tokens"].shape == (rows, seq_len)
        dt = time.perf_counter() - t0
        assert q.get(timeout=60) is None
        p.join(60)
    finally:
        if p.is_alive():
            p.kill()
    return batches * size / dt / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    size = nbytes(make_batch(a.rows, a.seq_len, 0))
    print(f"batch: {a.rows} rows x {a.seq_len} tokens = {size / 2**20:.1f} MiB, "
          f"{a.batches} batches per run, best of {a.repeats}")
    ours = max(bench_shm(a.rows, a.seq_len, a.batches, a.slots) for _ in range(a.repeats))
    print(f"RolloutBuffer (shm ring, {a.slots} slots): {ours:.2f} GB/s")
    base = max(bench_queue(a.rows, a.seq_len, a.batches) for _ in range(a.repeats))
    print(f"multiprocessing.Queue (pickled):      {base:.2f} GB/s")
    rows_s = ours * 1e9 / size * a.rows
    print(f"RolloutBuffer rows/s: {rows_s:,.0f}")
    print(f"RESULT buffer_vs_queue ours={ours:.3f} baseline={base:.3f} ratio={ours / base:.2f}")


if __name__ == "__main__":
    main()
