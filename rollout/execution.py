"""The one builder of CURE's execution matrix: codes x (generated tests + ground-truth tests).

Training rollouts, the held-out evaluation during training, ``cure-eval`` and the tiny-task
measurement all execute through :func:`execute`, so they count passes the same way. For a
batch of problems it takes the parsed codes and parsed generated tests of each problem, adds
the problem's first ``max_gt_tests`` ground-truth tests (0: all), and runs every problem's
matrix in ONE ``sandbox.run_matrices`` call (the pool schedules the whole batch at once). A
problem without ground-truth tests (label-free training only) has an empty ground-truth part.

Unparsed responses are never executed: an unparsed code's row and an unparsed test's column
are all False in the pass tables (the rule of :func:`rollout.rewards.mask_unparsed`) and
:data:`NOT_RUN` in the verdict tables; a problem with no parsed code, or with no test at all,
sends nothing to the sandbox.

Sandbox faults are not rewards: a problem whose tables hold a SANDBOX_ERROR cell (an execution
the sandbox could not carry out, an infrastructure fault, never the program's) is executed once
more, alone with the other faulted problems, same codes and tests (``retries``, default 1). A
problem still faulted after that is listed in :attr:`Execution.excluded`: its groups carry no
signal and no metric counts it (callers: ``rollout.experience_maker`` for training and the
held-out evaluation, ``rollout.evaluate`` for ``cure-eval``).

The sandbox stays ignorant of problems and rewards: it sees programs, stdin/stdout tests and
verdicts only.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from rollout.parsing import ParsedCode, ParsedTest
from rollout.problems import Problem

__all__ = ["NOT_RUN", "Execution", "execute", "gt_tests"]

log = logging.getLogger(__name__)

NOT_RUN = -1  # verdict table entry of a cell never executed (an unparsed code or test)


def gt_tests(problem: Problem, max_gt_tests: int) -> list[tuple[str, str]]:
    """The ground-truth (input, output) pairs a problem is executed against: its first
    ``max_gt_tests`` private tests, or all of them when ``max_gt_tests`` is 0."""
    tests = problem.private_tests()
    return tests[:max_gt_tests] if max_gt_tests > 0 else tests


@dataclasses.dataclass
class Execution:
    """The execution tables of a batch, one entry per problem.

    ``gen_passed[i]`` bool [n_codes, n_tests] (codes x generated tests) and ``gt_passed[i]``
    bool [n_codes, n_gt] (codes x ground-truth tests), unparsed rows/columns False;
    ``gen_verdicts[i]`` / ``gt_verdicts[i]`` int8 of the same shapes: the ``sandbox.Verdict``
    value of each executed cell, :data:`NOT_RUN` elsewhere; ``counts``: executed cells per
    verdict name, over the whole batch (the final tables, after any retry).

    ``retried``: problems executed a second time because their first tables held a
    SANDBOX_ERROR cell; ``excluded``: problems whose tables still hold one (not to be scored).
    """

    gen_passed: list[np.ndarray]
    gt_passed: list[np.ndarray]
    gen_verdicts: list[np.ndarray]
    gt_verdicts: list[np.ndarray]
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    retried: list[int] = dataclasses.field(default_factory=list)
    excluded: list[int] = dataclasses.field(default_factory=list)

    def sandbox_errors(self, i: int) -> int:
        """Cells of problem ``i`` that failed inside the sandbox (SANDBOX_ERROR)."""
        from sandbox import Verdict

        bad = int(Verdict.SANDBOX_ERROR)
        return int((self.gen_verdicts[i] == bad).sum() + (self.gt_verdicts[i] == bad).sum())


def execute(problems: Sequence[Problem], codes: Sequence[Sequence[ParsedCode]],
            tests: Sequence[Sequence[ParsedTest]], *, max_gt_tests: int, sandbox: Any,
            retries: int = 1) -> Execution:
    """Runs ``codes[i]`` x (``tests[i]`` + ground-truth tests of ``problems[i]``) for every
    problem in one ``sandbox.run_matrices`` call and returns the tables (see :class:`Execution`).

    ``codes[i]`` / ``tests[i]``: the parsed responses of problem ``i`` (anything with ``ok`` and
    ``code``, resp. ``ok``, ``input`` and ``output``); their counts may differ per problem.

    Problems whose tables hold a SANDBOX_ERROR cell are executed again (one more
    ``run_matrices`` call for all of them), up to ``retries`` times; their new tables replace
    the old ones. Those still faulted are :attr:`Execution.excluded`.
    """
    if not len(problems) == len(codes) == len(tests):
        raise ValueError(f"execute: {len(problems)} problems, {len(codes)} code lists and "
                         f"{len(tests)} test lists; expected one of each per problem")
    if retries < 0:
        raise ValueError(f"retries: expected >= 0, got {retries}")
    out = _execute_once(problems, codes, tests, max_gt_tests, sandbox)
    for _ in range(retries):
        bad = [i for i in range(len(problems)) if out.sandbox_errors(i)]
        if not bad:
            break
        again = _execute_once([problems[i] for i in bad], [codes[i] for i in bad],
                              [tests[i] for i in bad], max_gt_tests, sandbox)
        for j, i in enumerate(bad):
            out.gen_passed[i], out.gt_passed[i] = again.gen_passed[j], again.gt_passed[j]
            out.gen_verdicts[i], out.gt_verdicts[i] = again.gen_verdicts[j], again.gt_verdicts[j]
        out.retried.extend(bad)
    out.retried = sorted(set(out.retried))
    out.excluded = [i for i in range(len(problems)) if out.sandbox_errors(i)]
    if out.retried:
        log.warning("execute: %d of %d problems hit SANDBOX_ERROR and were executed again; "
                    "%d still failed inside the sandbox and are not scored",
                    len(out.retried), len(problems), len(out.excluded))
    out.counts = _verdict_counts(out.gen_verdicts + out.gt_verdicts)
    return out


def _verdict_counts(tables: Sequence[np.ndarray]) -> collections.Counter:
    """Executed cells (not :data:`NOT_RUN`) per ``sandbox.Verdict`` name."""
    from sandbox import Verdict

    values, n = np.unique(np.concatenate([t.ravel() for t in tables] or [np.zeros(0, np.int8)]),
                          return_counts=True)
    return collections.Counter({Verdict(int(v)).name: int(c) for v, c in zip(values, n)
                                if v != NOT_RUN})


def _execute_once(problems: Sequence[Problem], codes: Sequence[Sequence[ParsedCode]],
                  tests: Sequence[Sequence[ParsedTest]], max_gt_tests: int, sandbox: Any
                  ) -> Execution:
    """One ``run_matrices`` call for the whole batch: the tables, no retry, no counts."""
    from sandbox import TestCase, Verdict

    groups, layout = [], []
    for p, pcs, pts in zip(problems, codes, tests):
        rows = [j for j, c in enumerate(pcs) if c.ok]
        cols = [k for k, t in enumerate(pts) if t.ok]
        gt = gt_tests(p, max_gt_tests)
        cases = [TestCase(pts[k].input, pts[k].output) for k in cols]
        cases += [TestCase(a, b) for a, b in gt]
        layout.append((len(pcs), len(pts), rows, cols, len(gt)))
        groups.append(([pcs[j].code for j in rows], cases, p.test_time_limit))
    live = [g for g, (progs, cases, _) in enumerate(groups) if progs and cases]
    ran = sandbox.run_matrices([groups[g] for g in live]) if live else []
    results: dict[int, Any] = dict(zip(live, ran))

    out = Execution([], [], [], [])
    for g, (n, m, rows, cols, n_gt) in enumerate(layout):
        gen_v = np.full((n, m), NOT_RUN, dtype=np.int8)
        gt_v = np.full((n, n_gt), NOT_RUN, dtype=np.int8)
        res = results.get(g)
        if res is not None:
            v = np.asarray(res.verdicts).astype(np.int8).reshape(len(rows), len(cols) + n_gt)
            r = np.asarray(rows)
            if cols:
                gen_v[np.ix_(r, np.asarray(cols))] = v[:, :len(cols)]
            gt_v[r, :] = v[:, len(cols):]
        out.gen_verdicts.append(gen_v)
        out.gt_verdicts.append(gt_v)
        out.gen_passed.append(gen_v == int(Verdict.OK))
        out.gt_passed.append(gt_v == int(Verdict.OK))
    return out
