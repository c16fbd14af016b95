r"""Evaluation metrics from one sampled table per problem (numpy only).

Per problem: ``gen_passed`` bool [n, m] (codes x generated tests) and ``gt_passed`` bool [n, t]
(codes x ground-truth tests), after :func:`rollout.rewards.mask_unparsed` (applied here when
the parse masks are given), so unparsed codes fail everything and unparsed tests pass nothing.

- correct codes :math:`C = \{j : \prod_l B^{gt}_{jl} = 1\}`; wrong codes :math:`W` = the other
  *parsed* codes.
- code accuracy (pooled): :math:`\sum_p |C_p| / \sum_p n_p` (unparsed codes count as wrong).
- accurate tests (problems with :math:`C \ne \emptyset`): :math:`A = \{k : \prod_{j\in C}
  B^{gen}_{jk} = 1\}`; unit-test accuracy (pooled over those problems):
  :math:`\sum_p |A_p| / \sum_p m_p` (unparsed tests count as inaccurate).
- BoN(n', m'): among codes :math:`0..n'-1`, pick :math:`\arg\max_j \sum_{k<m'} B^{gen}_{jk}`
  (ties to the lowest index); score 1 if it is correct. Mean over problems. All pairs come
  from prefixes of the same table; with :math:`m'=0` the pick is code 0.
- :math:`p_{01}` = share of (wrong code, accurate test) pairs where the code passes,
  :math:`p_{00}` = share of (wrong code, parsed inaccurate test) pairs where the code passes;
  pooled over problems with a correct code (a pair needs a real program and a real test).
- parse rates: parsed codes / codes and parsed tests / tests.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from rollout.contract.stats import bon_rates, rates
from rollout.rewards import mask_unparsed

__all__ = ["aggregate", "bon_key", "evaluate_table", "format_table"]

_COUNT_KEYS = (
    "n_codes", "n_correct_codes", "n_code_parsed",
    "n_tests", "n_test_parsed",
    "ut_tests", "ut_accurate",
    "p01_pass", "p01_pairs", "p00_pass", "p00_pairs",
)


def bon_key(n: int, m: int) -> str:
    """Key of BoN(n, m) in the result dicts: "NxM"."""
    return f"{n}x{m}"


def evaluate_table(
    gen_passed: np.ndarray,
    gt_passed: np.ndarray,
    bon: Sequence[tuple[int, int]] = (),
    *,
    code_parsed: np.ndarray | None = None,
    test_parsed: np.ndarray | None = None,
) -> dict:
    """Metrics of one problem's table: counts (pooled later by :func:`aggregate`), the
    problem's own rates and ``"bon"``: {"NxM": 0.0 or 1.0} for every (n, m) in ``bon``."""
    gen = np.asarray(gen_passed)
    gt = np.asarray(gt_passed)
    if gen.ndim != 2 or gt.ndim != 2 or gen.shape[0] != gt.shape[0]:
        raise ValueError(
            f"gen_passed/gt_passed: expected [codes, tests] matrices with the same number of codes, "
            f"got {gen.shape} and {gt.shape}"
        )
    n, m = gen.shape
    if gt.shape[1] == 0:
        raise ValueError("gt_passed: the problem has no ground-truth tests, so correctness is undefined")
    cp = np.ones(n, bool) if code_parsed is None else np.asarray(code_parsed, dtype=bool)
    tp = np.ones(m, bool) if test_parsed is None else np.asarray(test_parsed, dtype=bool)
    gen = mask_unparsed(gen, cp, tp)
    gt = mask_unparsed(gt, cp)
    correct = gt.all(axis=1)
    wrong = cp & ~correct
    out: dict = {k: 0 for k in _COUNT_KEYS}
    out.update(n_codes=n, n_correct_codes=int(correct.sum()), n_code_parsed=int(cp.sum()),
               n_tests=m, n_test_parsed=int(tp.sum()))
    if correct.any():
        accurate = gen[correct].all(axis=0)
        inaccurate = tp & ~accurate
        out["ut_tests"] = m
        out["ut_accurate"] = int(accurate.sum())
        gw = gen[wrong]
        out["p01_pass"] = int(gw[:, accurate].sum())
        out["p01_pairs"] = int(wrong.sum() * accurate.sum())
        out["p00_pass"] = int(gw[:, inaccurate].sum())
        out["p00_pairs"] = int(wrong.sum() * inaccurate.sum())
    out["bon"] = {}
    if bon:
        cum = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(gen, axis=1)], axis=1)
        for nn, mm in bon:
            if not (1 <= nn <= n and 0 <= mm <= m):
                raise ValueError(
                    f"bon: ({nn}, {mm}) needs 1 <= n <= {n} codes and 0 <= m <= {m} tests in this table"
                )
            pick = int(np.argmax(cum[:nn, mm]))
            out["bon"][bon_key(nn, mm)] = float(correct[pick])
    out["code_accuracy"] = out["n_correct_codes"] / n if n else None
    out["unit_test_accuracy"] = out["ut_accurate"] / m if correct.any() and m else None
    return out


def aggregate(results: Iterable[dict]) -> dict:
    """Pool per-problem dicts from :func:`evaluate_table` into the headline metrics.

    Returns {"problems", "code_accuracy", "unit_test_accuracy", "bon": {"NxM": acc}, "p_01",
    "p_00", "code_parse_rate", "test_parse_rate", "counts"}; a rate with an empty denominator is
    None. ``counts`` holds the summed counts, ``problems`` and ``bon_sum`` {"NxM": correct
    picks}: what several hosts' results are merged from (``rollout.contract.stats``), which
    also owns the ratio arithmetic used here.
    """
    results = list(results)
    counts: dict = {k: sum(int(r[k]) for r in results) for k in _COUNT_KEYS}
    counts["problems"] = len(results)
    keys = {k for r in results for k in r["bon"]}
    counts["bon_sum"] = {}
    for k in sorted(keys, key=lambda s: tuple(int(x) for x in s.split("x"))):
        vals = [r["bon"][k] for r in results if k in r["bon"]]
        if len(vals) != len(results):
            raise ValueError(f"bon: {k} is missing from some problems; use the same list everywhere")
        counts["bon_sum"][k] = float(np.sum(vals))
    r = rates(counts)
    return {
        "problems": len(results),
        "code_accuracy": r["code_accuracy"],
        "unit_test_accuracy": r["unit_test_accuracy"],
        "bon": bon_rates(counts),
        "p_01": r["p_01"],
        "p_00": r["p_00"],
        "code_parse_rate": r["code_parse_rate"],
        "test_parse_rate": r["test_parse_rate"],
        "counts": counts,
    }


def format_table(agg: dict, title: str = "") -> str:
    """A small two-column text table of :func:`aggregate`'s result (rates in %)."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100.0 * v:.1f}"

    rows = [("problems", str(agg["problems"]))]
    for key, label in (("unit_test_accuracy", "unit-test acc %"), ("code_accuracy", "code acc %")):
        rows.append((label, pct(agg[key])))
    for k, v in agg["bon"].items():
        rows.append((f"BoN {k} %", pct(v)))
    for key, label in (("p_01", "p_01 %"), ("p_00", "p_00 %"),
                       ("code_parse_rate", "code parsed %"), ("test_parse_rate", "test parsed %")):
        rows.append((label, pct(agg[key])))
    w = max(len(a) for a, _ in rows)
    v = max(len(b) for _, b in rows)
    lines = [title] if title else []
    lines += [f"{a:<{w}}  {b:>{v}}" for a, b in rows]
    return "\n".join(lines)
