"""Evaluation metrics: hand-worked tables, pooling, BoN by prefixes, unparsed responses."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rollout import metrics

B = lambda rows: np.array(rows, dtype=bool)

# Codes 0, 1 correct; 2, 3 wrong. Tests t0..t2 pass every correct code (accurate), t3, t4 do not.
GT = B([[1, 1, 1], [1, 1, 1], [1, 0, 1], [0, 0, 0]])
GEN = B([
    [1, 1, 1, 1, 0],
    [1, 1, 1, 0, 0],
    [1, 0, 1, 0, 0],
    [1, 0, 0, 1, 0],
])


def test_evaluate_table_hand_worked():
    r = metrics.evaluate_table(GEN, GT, bon=[(4, 5), (4, 0), (1, 5)])
    assert r["n_codes"] == 4 and r["n_correct_codes"] == 2
    assert r["code_accuracy"] == 0.5
    assert r["ut_accurate"] == 3 and r["unit_test_accuracy"] == 0.6
    # Wrong codes {2, 3} x accurate tests {0, 1, 2}: passes (2,0) (2,2) (3,0) -> 3 of 6.
    assert (r["p01_pass"], r["p01_pairs"]) == (3, 6)
    # Wrong codes x inaccurate tests {3, 4}: passes (3,3) -> 1 of 4.
    assert (r["p00_pass"], r["p00_pairs"]) == (1, 4)
    assert r["bon"] == {"4x5": 1.0, "4x0": 1.0, "1x5": 1.0}


def test_bon_prefixes_and_ties():
    # Code 0 is wrong but passes the first generated test; code 2 is correct and passes the rest.
    gt = B([[0], [0], [1]])
    gen = B([[1, 0, 0], [0, 0, 0], [0, 1, 1]])
    r = metrics.evaluate_table(gen, gt, bon=[(3, 1), (3, 2), (3, 3), (2, 3), (3, 0)])
    # m=1: code 0 leads; m=2: tie 1-1 between codes 0 and 2 -> lowest index (0); m=3: code 2.
    assert r["bon"] == {"3x1": 0.0, "3x2": 0.0, "3x3": 1.0, "2x3": 0.0, "3x0": 0.0}


def test_no_correct_code_excluded_from_unit_test_accuracy():
    r = metrics.evaluate_table(B([[1, 0], [1, 1]]), B([[0], [0]]), bon=[(2, 2)])
    assert r["n_correct_codes"] == 0 and r["unit_test_accuracy"] is None
    assert r["ut_tests"] == 0 and r["p01_pairs"] == 0
    agg = metrics.aggregate([r, metrics.evaluate_table(GEN, GT, bon=[(2, 2)])])
    assert agg["unit_test_accuracy"] == 0.6  # only the problem with a correct code counts
    assert agg["code_accuracy"] == 2 / 6  # pooled over all codes


def test_unparsed_responses():
    code_parsed = np.array([True, True, True, False])
    test_parsed = np.array([True, False, True, True, True])
    r = metrics.evaluate_table(GEN, GT, bon=[(4, 5)], code_parsed=code_parsed, test_parsed=test_parsed)
    # An unparsed test passes nothing: it is not accurate (t1 drops from 3 accurate to 2).
    assert r["ut_accurate"] == 2 and r["unit_test_accuracy"] == 0.4
    # Code 3 had no program: it is a wrong code for accuracy but no party to p_01 / p_00.
    assert r["n_correct_codes"] == 2 and r["n_code_parsed"] == 3 and r["n_test_parsed"] == 4
    assert (r["p01_pass"], r["p01_pairs"]) == (2, 2)  # code 2 x {t0, t2}
    assert (r["p00_pass"], r["p00_pairs"]) == (0, 2)  # code 2 x {t3, t4}; t1 unparsed is excluded
    agg = metrics.aggregate([r])
    assert agg["code_parse_rate"] == 0.75 and agg["test_parse_rate"] == 0.8


def test_unparsed_correct_looking_code_is_wrong():
    # The gt row says "passes" but the code was never parsed: the rule forces it to fail.
    r = metrics.evaluate_table(B([[1], [1]]), B([[1], [1]]), bon=[(1, 1)], code_parsed=[False, True])
    assert r["n_correct_codes"] == 1 and r["bon"]["1x1"] == 0.0


def test_aggregate_and_table():
    rs = [metrics.evaluate_table(GEN, GT, bon=[(4, 5), (1, 0)]),
          metrics.evaluate_table(GEN[[3, 2, 1, 0]], GT[[3, 2, 1, 0]], bon=[(4, 5), (1, 0)])]
    agg = metrics.aggregate(rs)
    assert agg["problems"] == 2
    assert agg["bon"] == {"1x0": 0.5, "4x5": 1.0}
    assert agg["p_01"] == 0.5 and agg["p_00"] == 0.25
    text = metrics.format_table(agg, title="toy")
    lines = text.splitlines()
    assert lines[0] == "toy"
    assert any(line.startswith("BoN 4x5 %") and line.endswith("100.0") for line in lines)
    assert any(line.startswith("unit-test acc %") and line.endswith("60.0") for line in lines)
    empty = metrics.aggregate([])
    assert empty["code_accuracy"] is None
    assert "n/a" in metrics.format_table(empty)


def test_errors():
    with pytest.raises(ValueError, match="bon: \\(5, 1\\)"):
        metrics.evaluate_table(GEN, GT, bon=[(5, 1)])
    with pytest.raises(ValueError, match="no ground-truth"):
        metrics.evaluate_table(GEN, np.zeros((4, 0), bool))
    with pytest.raises(ValueError, match="same number of codes"):
        metrics.evaluate_table(GEN, GT[:3])
    with pytest.raises(ValueError, match="4x5 is missing"):
        metrics.aggregate([metrics.evaluate_table(GEN, GT, bon=[(4, 5)]), metrics.evaluate_table(GEN, GT)])


@st.composite
def _tables(draw):
    n = draw(st.integers(1, 8))
    m = draw(st.integers(0, 8))
    t = draw(st.integers(1, 4))
    return draw(hnp.arrays(bool, (n, m))), draw(hnp.arrays(bool, (n, t)))


@settings(max_examples=150, deadline=None)
@given(_tables())
def test_property_bon_m0_is_code_0_and_prefix_consistency(table):
    gen, gt = table
    n, m = gen.shape
    pairs = [(k, j) for k in range(1, n + 1) for j in range(m + 1)]
    r = metrics.evaluate_table(gen, gt, bon=pairs)
    correct = gt.all(axis=1)
    for k in range(1, n + 1):
        assert r["bon"][f"{k}x0"] == float(correct[0])
    for k, j in pairs:  # brute force: first maximiser of the prefix pass counts
        counts = [int(gen[i, :j].sum()) for i in range(k)]
        assert r["bon"][f"{k}x{j}"] == float(correct[counts.index(max(counts))])
