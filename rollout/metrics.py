r"""Evaluation metrics from one sampled table per problem (numpy only).

Per problem: ``gen_passed`` bool [n, m] (codes x generated tests) and ``gt_passed`` bool [n, t]
(codes x ground-truth tests), after :func:`rollout.rewards.mask_unparsed` (applied here when
the parse masks are given), so unparsed codes fail everything and unparsed tests pass nothing.

Two conventions for unparsed generated tests (``drop_unparsed_tests``; the evaluation
protocols of :mod:`rollout.contract.protocol`): kept (False, this project's), every sampled test
is a column; dropped (True, the reference's), the columns are the parsed tests only, in order,
and a problem with tests sampled but none parsed is not scored (it counts in
``problems_without_parsed_test``, the parse rates, the lengths and the all-tests unit-test
accuracy only). :math:`T` below is the set of columns of the convention.

- correct codes :math:`C = \{j : \prod_l B^{gt}_{jl} = 1\}`; wrong codes :math:`W`: the other
  codes (dropped: all of them, as the reference; kept: the *parsed* ones, a pair needs a program).
- code accuracy (pooled over scored problems): :math:`\sum_p |C_p| / \sum_p n_p` (unparsed codes
  count as wrong); code accumulate accuracy: :math:`\sum_p \sum_{j,l} B^{gt}_{jl} / \sum_p n_p t_p`.
- accurate tests (problems with :math:`C \ne \emptyset`): :math:`A = \{k \in T: \prod_{j\in C}
  B^{gen}_{jk} = 1\}`; unit-test accuracy (pooled over those problems): :math:`\sum_p |A_p| /
  \sum_p |T_p|`; both conventions are always reported: ``unit_test_accuracy_all_tests``
  (denominator: every sampled test) and ``unit_test_accuracy_parsed_tests`` (parsed tests);
  unit-test accumulate accuracy: :math:`\sum_p \sum_{j\in C, k\in T} B^{gen}_{jk} / \sum_p |C_p||T_p|`.
- BoN(n', m'): among codes :math:`0..n'-1`, pick :math:`\arg\max_j \sum_{k} B^{gen}_{jk}` over
  the first m' columns of :math:`T` (ties to the lowest index); score 1 if it is correct. Mean
  over scored problems. BoN accumulate: the ground-truth tests the pick passes over all
  ground-truth tests (pooled). All pairs come from prefixes of the same table; with
  :math:`m'=0` the pick is code 0.
- :math:`p_{01}` = share of (wrong code, accurate test) pairs where the code passes,
  :math:`p_{00}` = share of (wrong code, parsed inaccurate test) pairs where the code passes;
  pooled over problems with a correct code.
- parse rates: parsed codes / codes and parsed tests / tests (every problem given).
- mean response lengths (tokens): over the responses whose length is given.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from rollout.contract.stats import bon_accumulate_rates, bon_rates, rates
from rollout.rewards import mask_unparsed

__all__ = ["aggregate", "bon_key", "evaluate_table", "format_table"]

_COUNT_KEYS = (
    "problems", "problems_without_parsed_test",
    "n_codes", "n_scored_codes", "n_correct_codes", "n_code_parsed",
    "n_tests", "n_test_parsed",
    "gt_tests", "gt_cells", "gt_cells_passed",
    "ut_tests", "ut_tests_all", "ut_tests_parsed", "ut_accurate", "ut_cells", "ut_cells_passed",
    "p01_pass", "p01_pairs", "p00_pass", "p00_pairs",
    "code_len_sum", "code_len_count", "test_len_sum", "test_len_count",
)


def bon_key(n: int, m: int) -> str:
    """Key of BoN(n, m) in the result dicts: "NxM"."""
    return f"{n}x{m}"


def _bon_order(key: str) -> tuple[int, ...]:
    return tuple(int(x) for x in key.split("x"))


def _lengths(lengths: Sequence[int | None] | None, count: int, what: str) -> list[int]:
    """The known lengths of ``lengths`` (None entries: not known)."""
    if lengths is None:
        return []
    lengths = list(lengths)
    if len(lengths) != count:
        raise ValueError(f"{what}: {len(lengths)} lengths for {count} responses")
    return [int(x) for x in lengths if x is not None]


def evaluate_table(
    gen_passed: np.ndarray,
    gt_passed: np.ndarray,
    bon: Sequence[tuple[int, int]] = (),
    *,
    code_parsed: np.ndarray | None = None,
    test_parsed: np.ndarray | None = None,
    drop_unparsed_tests: bool = False,
    code_lengths: Sequence[int | None] | None = None,
    test_lengths: Sequence[int | None] | None = None,
) -> dict:
    """Metrics of one problem's table: counts (pooled later by :func:`aggregate`), the
    problem's own rates, ``"bon"``: {"NxM": 0.0 or 1.0, None when the problem is not scored}
    for every (n, m) in ``bon``, and the per-pair sums ``bon_sum`` / ``bon_acc_sum``.
    ``code_lengths`` / ``test_lengths``: response lengths in tokens (None entries unknown)."""
    gen = np.asarray(gen_passed)
    gt = np.asarray(gt_passed)
    if gen.ndim != 2 or gt.ndim != 2 or gen.shape[0] != gt.shape[0]:
        raise ValueError(
            f"gen_passed/gt_passed: expected [codes, tests] matrices with the same number of codes, "
            f"got {gen.shape} and {gt.shape}"
        )
    n, m = gen.shape
    t = gt.shape[1]
    if t == 0:
        raise ValueError("gt_passed: the problem has no ground-truth tests, so correctness is undefined")
    cp = np.ones(n, bool) if code_parsed is None else np.asarray(code_parsed, dtype=bool)
    tp = np.ones(m, bool) if test_parsed is None else np.asarray(test_parsed, dtype=bool)
    gen = mask_unparsed(gen, cp, tp)
    gt = mask_unparsed(gt, cp)
    correct = gt.all(axis=1)
    no_test = m > 0 and not tp.any()
    scored = not (drop_unparsed_tests and no_test)
    cols = tp if drop_unparsed_tests else np.ones(m, bool)  # the convention's test columns
    g = gen[:, cols]
    wrong = ~correct if drop_unparsed_tests else cp & ~correct
    out: dict = {k: 0 for k in _COUNT_KEYS}
    out.update(problems=int(scored), problems_without_parsed_test=int(no_test), n_codes=n,
               n_code_parsed=int(cp.sum()), n_tests=m, n_test_parsed=int(tp.sum()))
    if scored:
        out.update(n_scored_codes=n, n_correct_codes=int(correct.sum()), gt_tests=t,
                   gt_cells=n * t, gt_cells_passed=int(gt.sum()))
    if correct.any():
        accurate = g[correct].all(axis=0)
        inaccurate = tp[cols] & ~accurate
        out.update(ut_tests=int(cols.sum()), ut_tests_all=m, ut_tests_parsed=int(tp.sum()),
                   ut_accurate=int(accurate.sum()),
                   ut_cells=int(correct.sum() * cols.sum()), ut_cells_passed=int(g[correct].sum()))
        gw = g[wrong]
        out["p01_pass"] = int(gw[:, accurate].sum())
        out["p01_pairs"] = int(wrong.sum() * accurate.sum())
        out["p00_pass"] = int(gw[:, inaccurate].sum())
        out["p00_pairs"] = int(wrong.sum() * inaccurate.sum())
    codes, tests = _lengths(code_lengths, n, "code_lengths"), _lengths(test_lengths, m, "test_lengths")
    out.update(code_len_sum=sum(codes), code_len_count=len(codes),
               test_len_sum=sum(tests), test_len_count=len(tests))
    out["bon"], out["bon_sum"], out["bon_acc_sum"] = {}, {}, {}
    if bon:
        cum = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(g, axis=1)], axis=1)
        for nn, mm in bon:
            if not (1 <= nn <= n and 0 <= mm <= m):
                raise ValueError(
                    f"bon: ({nn}, {mm}) needs 1 <= n <= {n} codes and 0 <= m <= {m} tests in this table"
                )
            pick = int(np.argmax(cum[:nn, min(mm, g.shape[1])]))
            key = bon_key(nn, mm)
            out["bon"][key] = float(correct[pick]) if scored else None
            out["bon_sum"][key] = float(correct[pick]) if scored else 0.0
            out["bon_acc_sum"][key] = int(gt[pick].sum()) if scored else 0
    out["code_accuracy"] = out["n_correct_codes"] / n if scored else None
    out["unit_test_accuracy"] = out["ut_accurate"] / out["ut_tests"] if out["ut_tests"] else None
    return out


def aggregate(results: Iterable[dict], bon_keys: Iterable[str] = ()) -> dict:
    """Pool per-problem dicts from :func:`evaluate_table` into the headline metrics.

    Returns {"problems" (scored), "problems_without_parsed_test", every ratio of
    ``rollout.contract.stats.RATIOS`` ("code_accuracy", "unit_test_accuracy", ...), "bon":
    {"NxM": acc}, "bon_accumulate": {"NxM": acc}, "counts"}; a rate with an empty denominator
    is None. ``counts`` holds the summed counts, ``bon_sum`` {"NxM": correct picks} and
    ``bon_acc_sum`` {"NxM": ground-truth tests the picks pass}: what several hosts' results are
    merged from (``rollout.contract.stats``), which also owns the ratio arithmetic used here.
    ``bon_keys``: BoN keys to report even with no problems.
    """
    results = list(results)
    counts: dict = {k: sum(int(r[k]) for r in results) for k in _COUNT_KEYS}
    keys = set(bon_keys) | {k for r in results for k in r["bon_sum"]}
    counts["bon_sum"], counts["bon_acc_sum"] = {}, {}
    for k in sorted(keys, key=_bon_order):
        have = [r for r in results if k in r["bon_sum"]]
        if len(have) != len(results):
            raise ValueError(f"bon: {k} is missing from some problems; use the same list everywhere")
        counts["bon_sum"][k] = float(sum(r["bon_sum"][k] for r in have))
        counts["bon_acc_sum"][k] = int(sum(r["bon_acc_sum"][k] for r in have))
    out: dict = {"problems": counts["problems"],
                 "problems_without_parsed_test": counts["problems_without_parsed_test"]}
    out.update(rates(counts))
    out["bon"] = bon_rates(counts)
    out["bon_accumulate"] = bon_accumulate_rates(counts)
    out["counts"] = counts
    return out


def format_table(agg: dict, title: str = "") -> str:
    """A small two-column text table of :func:`aggregate`'s result (rates in %)."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100.0 * v:.1f}"

    rows = [("problems", str(agg["problems"]))]
    for key, label in (("unit_test_accuracy", "unit-test acc %"),
                       ("unit_test_accuracy_all_tests", "unit-test acc (all tests) %"),
                       ("unit_test_accuracy_parsed_tests", "unit-test acc (parsed tests) %"),
                       ("code_accuracy", "code acc %"),
                       ("code_accumulate_accuracy", "code accumulate acc %")):
        rows.append((label, pct(agg[key])))
    for k, v in agg["bon"].items():
        rows.append((f"BoN {k} %", pct(v)))
    for key, label in (("p_01", "p_01 %"), ("p_00", "p_00 %"),
                       ("code_parse_rate", "code parsed %"), ("test_parse_rate", "test parsed %")):
        rows.append((label, pct(agg[key])))
    for key, label in (("mean_code_length", "code tokens"), ("mean_test_length", "test tokens")):
        rows.append((label, "n/a" if agg[key] is None else f"{agg[key]:.0f}"))
    w = max(len(a) for a, _ in rows)
    v = max(len(b) for _, b in rows)
    lines = [title] if title else []
    lines += [f"{a:<{w}}  {b:>{v}}" for a, b in rows]
    return "\n".join(lines)
