"""Seeded task instances and the disjoint train / held-out evaluation splits.

An instance is (kind, parameter, seed): the seed draws its test inputs; outputs come from running
the reference program (:func:`rollout.tiny_tasks.run_trusted.run_trusted`). The split partitions each
kind's *parameters*, so a held-out problem's statement never occurs in training: held-out
accuracy measures reading the statement, not recall.
"""
from __future__ import annotations

import dataclasses
import math
import random

from rollout.problems import Problem
from rollout.tiny_tasks.kinds import KINDS, Param, TaskKind, kind_by_name
from rollout.tiny_tasks.run_trusted import run_trusted

__all__ = ["SPLITS", "TaskInstance", "generate_instance", "split_params", "task_instances",
           "task_problems"]

SPLITS = ("train", "eval")
EVAL_FRACTION = 0.2
SPLIT_SEED = 20250603


@dataclasses.dataclass(frozen=True)
class TaskInstance:
    """One generated problem plus what only the generator knows: its wrong programs."""

    kind: str
    param: Param
    seed: int
    problem: Problem
    mutants: tuple[str, ...]  # programs failing at least one ground-truth test

    @property
    def solution(self) -> str:
        return self.problem.solutions[0]


def split_params(kind: TaskKind | str, split: str, split_seed: int = SPLIT_SEED) -> list[Param]:
    """The parameters of ``kind`` in ``split``: a seeded ~20% (at least one) are held out."""
    kind = kind_by_name(kind) if isinstance(kind, str) else kind
    if split not in SPLITS:
        raise ValueError(f"unknown task split {split!r}; expected one of {SPLITS}")
    order = list(kind.params)
    random.Random(f"{split_seed}/{kind.name}").shuffle(order)
    n_eval = max(1, math.ceil(EVAL_FRACTION * len(order)))
    chosen = set(order[:n_eval]) if split == "eval" else set(order[n_eval:])
    return [p for p in kind.params if p in chosen]


def _distinct_inputs(kind: TaskKind, param: Param, rng: random.Random, count: int) -> list[str]:
    seen: list[str] = []
    for _ in range(200 * count):
        inp = kind.gen_input(rng, param)
        if inp not in seen:
            seen.append(inp)
            if len(seen) == count:
                return seen
    raise ValueError(f"task kind {kind.name!r} param {param!r}: cannot draw {count} distinct "
                     f"inputs (got {len(seen)})")


def generate_instance(kind: TaskKind | str, param: Param, seed: int, *, num_tests: int = 5,
                      num_examples: int = 1, dataset: str = "synthetic") -> TaskInstance:
    """One reproducible instance: same (kind, param, seed) -> identical problem and mutants."""
    kind = kind_by_name(kind) if isinstance(kind, str) else kind
    if param not in kind.params:
        raise ValueError(f"task kind {kind.name!r}: unknown param {param!r}")
    rng = random.Random(f"{kind.name}/{param}/{seed}")
    inputs = _distinct_inputs(kind, param, rng, num_tests + num_examples)
    solution = kind.solution(param)
    outputs = []
    for inp in inputs:
        out = run_trusted(solution, inp)
        if out is None:
            raise RuntimeError(f"task kind {kind.name!r} param {param!r}: the reference program "
                               f"failed on input {inp!r}")
        outputs.append(out)
    tests = list(zip(inputs[num_examples:], outputs[num_examples:]))
    mutants = tuple(m for m in kind.mutants(param)
                    if any(_norm(run_trusted(m, i)) != _norm(o) for i, o in tests))
    problem = Problem(
        task_id=f"{kind.name}/{param}/{seed}", question=kind.statement(param),
        test_input=[i for i, _ in tests], test_output=[o for _, o in tests],
        example_input=inputs[:num_examples], example_output=outputs[:num_examples],
        test_time_limit=1.0, dataset=dataset, difficulty=kind.name, solutions=[solution])
    return TaskInstance(kind.name, param, seed, problem, mutants)


def _norm(out: str | None) -> tuple[str, ...] | None:
    """The sandbox's comparison: whitespace-separated tokens."""
    return None if out is None else tuple(out.split())


def task_instances(split: str, *, per_param: int | None = None, seed: int = 0,
                   kinds: tuple[str, ...] | None = None, num_tests: int = 5) -> list[TaskInstance]:
    """All instances of a split: ``per_param`` seeds for every (kind, split parameter).

    Default ``per_param``: 4 for train, 1 for eval. Instance seeds are distinct between the
    splits (and parameters are disjoint anyway), so no problem occurs in both.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown task split {split!r}; expected one of {SPLITS}")
    if per_param is None:
        per_param = 4 if split == "train" else 1
    if per_param < 1:
        raise ValueError(f"per_param must be >= 1, got {per_param}")
    chosen = KINDS if kinds is None else tuple(kind_by_name(k) for k in kinds)
    base = seed * 1000 + (0 if split == "train" else 500)
    return [generate_instance(kind, param, base + i, num_tests=num_tests,
                              dataset=f"synthetic-{split}")
            for kind in chosen for param in split_params(kind, split)
            for i in range(per_param)]


def task_problems(split: str, **kwargs) -> list[Problem]:
    """The ``Problem`` records of :func:`task_instances` (what the rollout side consumes)."""
    return [inst.problem for inst in task_instances(split, **kwargs)]
