"""Held-out skill of a policy on the synthetic tasks, measured by generation + the sandbox.

code accuracy: share of sampled programs that pass every ground-truth test (pooled).
test validity: share of sampled unit tests that parse and that the reference program passes
(the evaluation prompt shows no example, as in CURE's evaluation).

    python -m rollout.tiny_tasks.measure --model=rollout/assets/tiny_coder --n=4 --temperature=1.0

Imports torch/transformers (through the engine) only when called.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Sequence

import numpy as np

from rollout.execution import execute
from rollout.parsing import ParsedCode, parse_code, parse_test
from rollout.problems import Problem
from rollout.prompts import STOP_STRINGS, PromptBuilder, PromptConfig

__all__ = ["measure_policy", "score_samples"]


def score_samples(problems: Sequence[Problem], codes: Sequence[Sequence[str]],
                  tests: Sequence[Sequence[str]], sandbox) -> dict:
    """Score response texts: ``codes[i]`` / ``tests[i]`` are the responses for problem i.

    One execution matrix per problem (:func:`rollout.execution.execute`): the sampled codes and
    the reference solution (last row) x the sampled tests and every ground-truth test. A code is
    correct when it passes every ground-truth test; a test is valid when the reference passes it.
    """
    parsed_codes = [[parse_code(c) for c in cs] for cs in codes]
    parsed_tests = [[parse_test(t) for t in ts] for ts in tests]
    if not len(problems) == len(parsed_codes) == len(parsed_tests):
        raise ValueError(f"score_samples: {len(problems)} problems, {len(codes)} code lists, "
                         f"{len(tests)} test lists")
    rows = [pcs + [ParsedCode(p.solutions[0])] for p, pcs in zip(problems, parsed_codes)]
    ran = execute(problems, rows, parsed_tests, max_gt_tests=0, sandbox=sandbox)
    per_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    correct = valid = 0
    for i, p in enumerate(problems):
        gt = ran.gt_passed[i][:-1]  # the sampled codes x ground truth
        ok = gt.all(axis=1) if gt.shape[1] else np.zeros(len(gt), dtype=bool)
        correct += int(ok.sum())
        valid += int(ran.gen_passed[i][-1].sum())  # the reference x the sampled tests
        per_kind[p.difficulty or "?"][0] += int(ok.sum())
        per_kind[p.difficulty or "?"][1] += len(ok)
    n_codes = sum(len(cs) for cs in codes)
    n_tests = sum(len(ts) for ts in tests)
    return {
        "problems": len(problems), "codes": n_codes, "tests": n_tests,
        "code_accuracy": correct / max(n_codes, 1),
        "code_parse_rate": sum(c.ok for cs in parsed_codes for c in cs) / max(n_codes, 1),
        "test_validity": valid / max(n_tests, 1),
        "test_parse_rate": sum(t.ok for ts in parsed_tests for t in ts) / max(n_tests, 1),
        "code_accuracy_by_kind": {k: round(c / t, 3) for k, (c, t) in sorted(per_kind.items())},
    }


def measure_policy(model_dir: str, problems: Sequence[Problem], *, n: int = 4,
                   temperature: float = 1.0, max_tokens: int = 160, seed: int | None = 0,
                   backend: str = "hf", workers: int = 2,
                   engine_options: dict | None = None, engine_seed: int = 0) -> dict:
    """Sample ``n`` programs and ``n`` tests per problem from ``model_dir`` and score them.

    ``engine_options``: extra :class:`rollout.engines.EngineConfig` fields; the vllm backend
    defaults to an in-process, eager CPU engine. ``seed=None`` sends unseeded requests (the
    engine's own generator, seeded by ``engine_seed``, draws them).
    """
    from rollout.engines import EngineConfig, SamplingConfig, make_engine
    from sandbox import Limits, Sandbox

    builder = PromptBuilder(PromptConfig(mode="raw", show_example_in_test_prompt=False))
    options = {"backend": backend, "model": model_dir, "dtype": "float32", "seed": engine_seed,
               "device": "cpu"}
    if backend == "vllm":
        options.update(enforce_eager=True, distributed_executor_backend="uni", in_process=True,
                       max_model_len=1024, gpu_memory_utilization=0.5)
    options.update(engine_options or {})
    engine = make_engine(EngineConfig(**options))
    try:
        sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens,
                                  stop=STOP_STRINGS, seed=seed)
        code_out = engine.generate([builder.code_prompt(p) for p in problems], n, sampling)
        test_out = engine.generate([builder.test_prompt(p) for p in problems], n, sampling)
    finally:
        engine.close()
    codes = [[s.text for s in row] for row in code_out]
    tests = [[s.text for s in row] for row in test_out]
    with Sandbox(workers=workers, limits=Limits(time_s=1.0)) as sb:
        result = score_samples(problems, codes, tests, sb)
    result.update(n=n, temperature=temperature, backend=backend)
    return result


def main(argv: list[str] | None = None) -> int:
    from rollout.tiny_tasks import task_problems

    ap = argparse.ArgumentParser(description="held-out code accuracy / test validity")
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--split", default="eval", choices=("train", "eval"))
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max_tokens", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0, help="-1: unseeded requests")
    ap.add_argument("--engine_seed", type=int, default=0)
    ap.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    ap.add_argument("--limit", type=int, default=0, help="first N problems only (0: all)")
    args = ap.parse_args(argv)
    problems = task_problems(args.split)
    if args.limit:
        problems = problems[:args.limit]
    res = measure_policy(args.model, problems, n=args.n, temperature=args.temperature,
                         max_tokens=args.max_tokens, seed=None if args.seed < 0 else args.seed,
                         backend=args.backend, engine_seed=args.engine_seed)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
