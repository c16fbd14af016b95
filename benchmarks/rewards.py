"""Benchmark: CURE rewards + advantages for one training batch.

100 problems x 16 codes x 24 tests (16 generated + 8 ground truth), ~5% unparsed responses,
"fraction" scaling, per-problem z-scores for codes and tests. Ours: ``rollout.rewards.
batch_rewards`` (vectorised numpy over the whole ragged batch). Baseline, measured in the same
run: a straightforward per-element Python-loop implementation of the same formulas, given
the matrices as nested Python lists (its conversion is not timed, which favours it). Both
outputs are checked equal before timing.

Prints ``RESULT rewards ours=<ms per batch> baseline=<ms per batch> ratio=<baseline/ours>``
(best-of-7 CPU milliseconds per batch; ratio > 1 means ours is faster).

    python benchmarks/rewards.py [--problems 100] [--codes 16] [--gen 16] [--gt 8] [--repeat 200] [--ragged]
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from rollout import rewards


def make_batch(rng: np.random.Generator, P: int, n: int, m: int, t: int, ragged: bool = False):
    """Random but CURE-shaped tables: a per-problem code skill and test quality. ``ragged``
    draws per-problem sizes up to (n, m, t) instead."""
    n0, m0, t0 = n, m, t
    gen, gt, cp, tp = [], [], [], []
    for _ in range(P):
        if ragged:
            n, m, t = (int(rng.integers(max(1, x // 2), x + 1)) for x in (n0, m0, t0))
        skill = rng.uniform(0.2, 0.95)
        gt.append(rng.random((n, t)) < skill)
        gen.append(rng.random((n, m)) < rng.uniform(0.3, 0.9))
        cp.append(rng.random(n) > 0.05)
        tp.append(rng.random(m) > 0.05)
    return gen, gt, cp, tp


def loop_rewards(gen, gt, cp, tp):
    """The same formulas, element by element in plain Python (fraction scaling)."""
    out_code, out_test = [], []
    for G, H, C, T in zip(gen, gt, cp, tp):
        n = len(G)
        m = len(G[0]) if n else 0
        t = len(H[0])
        raw, correct = [], []
        for j in range(n):
            passed = 0
            for l in range(t):
                if C[j] and H[j][l]:
                    passed += 1
            raw.append(passed / t)
            correct.append(C[j] and passed == t)
        out_code.append(_z(raw))
        if not any(correct):
            out_test.append([0.0] * m)
            continue
        n_w = sum(1 for j in range(n) if C[j] and not correct[j])
        traw = []
        for k in range(m):
            if not T[k]:
                traw.append(-1.0)
                continue
            acc_all, acc_wrong = True, 0
            for j in range(n):
                b = C[j] and G[j][k]
                if correct[j] and not b:
                    acc_all = False
                if C[j] and not correct[j] and b:
                    acc_wrong += 1
            c = 1.0 if acc_all else 0.0
            traw.append(2 * c - 1 if n_w == 0 else c - acc_wrong / n_w)
        out_test.append(_z(traw))
    return out_code, out_test


def _z(r):
    k = len(r)
    if k == 0:
        return []
    mean = sum(r) / k
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / k)
    if sd <= rewards.EPS:
        return [0.0] * k
    return [(x - mean) / sd for x in r]


def bench(fn, repeat: int, rounds: int = 7) -> float:
    """Best-of-``rounds`` CPU time per call in ms (process time: steadier than wall time on a
    shared machine; both sides are single-threaded)."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(repeat):
            fn()
        best = min(best, (time.process_time() - t0) / repeat)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--codes", type=int, default=16)
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--gt", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ragged", action="store_true", help="per-problem sizes drawn up to the given ones")
    a = ap.parse_args()

    gen, gt, cp, tp = make_batch(np.random.default_rng(a.seed), a.problems, a.codes, a.gen, a.gt, a.ragged)
    lists = ([g.tolist() for g in gen], [h.tolist() for h in gt], [c.tolist() for c in cp], [t.tolist() for t in tp])

    def ours():
        return rewards.batch_rewards(gen, gt, code_parsed=cp, test_parsed=tp)

    def baseline():
        return loop_rewards(*lists)

    res, (bc, bt) = ours(), baseline()
    np.testing.assert_allclose(res.code_advantage, np.concatenate(bc), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.test_advantage, np.concatenate(bt), rtol=1e-5, atol=1e-5)

    ours_ms = bench(ours, a.repeat)
    base_ms = bench(baseline, max(1, a.repeat // 20))
    shape = "up to " if a.ragged else ""
    print(f"batch: {a.problems} problems x {shape}{a.codes} codes x ({a.gen} generated + {a.gt} GT) tests; outputs match")
    print(f"ours (vectorised numpy)  {ours_ms:8.3f} ms/batch")
    print(f"baseline (Python loops)  {base_ms:8.3f} ms/batch")
    print("ratio = baseline ms / ours ms (> 1: ours faster)")
    print(f"RESULT rewards ours={ours_ms:.3f} baseline={base_ms:.3f} ratio={base_ms / ours_ms:.1f}")


if __name__ == "__main__":
    main()
