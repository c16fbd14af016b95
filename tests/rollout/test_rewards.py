"""CURE rewards: hand-worked matrices for every branch, properties on random matrices, and the
batched path checked against the per-problem functions."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rollout import rewards

B = lambda rows: np.array(rows, dtype=bool)

# Mixed problem: codes 0, 1 correct; code 2 passes 2/3 GT tests; code 3 passes none.
GT = B([[1, 1, 1], [1, 1, 1], [1, 0, 1], [0, 0, 0]])
# Tests: t0 accepts all, t1 exactly the correct ones, t2 correct + code 2,
#        t3 rejects correct code 1 and accepts wrong code 3, t4 rejects everything.
GEN = B([
    [1, 1, 1, 1, 0],
    [1, 1, 1, 0, 0],
    [1, 0, 1, 0, 0],
    [1, 0, 0, 1, 0],
])
EXPECTED = {
    "count": [0.0, 2.0, 1.0, -1.0, 0.0],
    "fraction": [0.0, 1.0, 0.5, -0.5, 0.0],
    "binary": [0.0, 1.0, 0.0, -1.0, 0.0],
}


def test_code_rewards_mixed():
    raw, correct = rewards.code_rewards(GT)
    np.testing.assert_allclose(raw, [1.0, 1.0, 2 / 3, 0.0])
    assert correct.tolist() == [True, True, False, False]


@pytest.mark.parametrize("scaling", ["count", "fraction", "binary"])
def test_unit_test_rewards_mixed(scaling):
    _, correct = rewards.code_rewards(GT)
    r = rewards.unit_test_rewards(GEN, correct, scaling=scaling)
    np.testing.assert_allclose(r, EXPECTED[scaling])


def test_all_codes_correct():
    gt = np.ones((3, 2), bool)
    gen = B([[1, 1], [1, 0], [1, 1]])  # t0 accepts every correct code, t1 rejects one
    raw, correct = rewards.code_rewards(gt)
    assert correct.all() and np.all(raw == 1.0)
    np.testing.assert_allclose(rewards.unit_test_rewards(gen, correct, "fraction"), [1.0, -1.0])
    np.testing.assert_allclose(rewards.unit_test_rewards(gen, correct, "binary"), [1.0, -1.0])
    # The paper's count formula has no wrong code to earn from: every test scores 0.
    np.testing.assert_allclose(rewards.unit_test_rewards(gen, correct, "count"), [0.0, 0.0])
    # ... so the codes (and the count-scaled tests) carry no signal.
    assert rewards.normalize(raw)[1] is False


def test_no_code_correct_gives_none():
    gt = B([[1, 0], [0, 0]])
    _, correct = rewards.code_rewards(gt)
    assert not correct.any()
    for scaling in rewards.SCALINGS:
        assert rewards.unit_test_rewards(B([[1], [0]]), correct, scaling) is None


def test_empty_generated_test_set():
    _, correct = rewards.code_rewards(GT)
    r = rewards.unit_test_rewards(np.zeros((4, 0), bool), correct)
    assert r is not None and r.shape == (0,)
    z, sig = rewards.normalize(r)
    assert z.shape == (0,) and sig is False


def test_unparsed_test_gets_the_minimum_reward():
    _, correct = rewards.code_rewards(GT)
    parsed = np.array([True, True, False, True, True])  # t2's response had no test
    # Whatever the (unexecuted) column says, the unparsed test gets the floor of its scaling.
    for scaling, floor in (("count", -2.0), ("fraction", -1.0), ("binary", -1.0)):
        r = rewards.unit_test_rewards(GEN, correct, scaling, test_parsed=parsed)
        exp = list(EXPECTED[scaling])
        exp[2] = floor
        np.testing.assert_allclose(r, exp)
        assert r[2] == rewards.min_test_reward(scaling, 2) == r.min()


def test_unparsed_code_fails_everything_and_is_no_opponent():
    code_parsed = np.array([True, True, False, True])
    gt = rewards.mask_unparsed(GT, code_parsed)
    raw, correct = rewards.code_rewards(gt)
    np.testing.assert_allclose(raw, [1.0, 1.0, 0.0, 0.0])
    assert correct.tolist() == [True, True, False, False]
    # Wrong codes are now {3} only (code 2 has no program): n_w = 1.
    r = rewards.unit_test_rewards(GEN, correct, "fraction", code_parsed=code_parsed)
    np.testing.assert_allclose(r, [0.0, 1.0, 1.0, -1.0, 0.0])


def test_mask_unparsed_rule():
    m = rewards.mask_unparsed(np.ones((3, 4), bool), [True, False, True], [True, True, False, True])
    assert m.tolist() == [
        [True, True, False, True],
        [False, False, False, False],
        [True, True, False, True],
    ]
    with pytest.raises(ValueError, match="test_parsed"):
        rewards.mask_unparsed(np.ones((3, 4), bool), None, [True])


def test_normalize_hand_worked_and_degenerate():
    z, sig = rewards.normalize(np.array(EXPECTED["fraction"]))
    assert sig
    np.testing.assert_allclose(z, np.array([-0.2, 0.8, 0.3, -0.7, -0.2]) / np.sqrt(0.26))
    z, sig = rewards.normalize(np.full(4, 0.1))  # mean has rounding error; still no signal
    assert sig is False and np.all(z == 0)
    assert rewards.normalize(np.array([]))[1] is False
    assert rewards.normalize(np.array([1.0, np.nan]))[1] is False


def test_label_free_code_rewards():
    gen = B([[1, 1, 0], [1, 1, 1], [0, 0, 1], [1, 1, 1]])
    raw, pseudo = rewards.label_free_code_rewards(gen, test_parsed=[True, True, True])
    np.testing.assert_allclose(raw, [2 / 3, 1.0, 1 / 3, 1.0])
    assert pseudo.tolist() == [False, True, False, True]
    # An unparsed test is no opponent: scored against t0, t1 only codes 0, 1, 3 tie at the top.
    raw, pseudo = rewards.label_free_code_rewards(gen, test_parsed=[True, True, False])
    np.testing.assert_allclose(raw, [1.0, 1.0, 0.0, 1.0])
    assert pseudo.tolist() == [True, True, False, True]
    raw, pseudo = rewards.label_free_code_rewards(np.zeros((2, 2), bool))
    assert not pseudo.any() and np.all(raw == 0)


def test_length_aware_hand_worked():
    # z > 0 on the three 1s. T = median(500, 2000, 3000) = 2000: x_P = [1500, 0, -1000], the
    # negative gets min(0, -1000) = -1000; balance 2000 / 1500 -> x = [2000, 0, -1000, -1000],
    # std = sqrt(6e6 / 4): advantages [4, 0, -2, -2] / sqrt(6).
    adv, sig = rewards.length_aware(np.array([1.0, 1.0, 1.0, -1.0]), np.array([500, 2000, 3000, 100]))
    assert sig
    np.testing.assert_allclose(adv, np.array([4.0, 0.0, -2.0, -2.0]) / np.sqrt(6))
    # T is clipped up to 1000: x_P = [900, 700] > 0, the negative gets min(0, 700) = 0, no x < 0:
    # the reference drops the group; ours keeps the plain normalised reward.
    adv, sig = rewards.length_aware(np.array([0.5, 0.5, 0.0]), np.array([100, 300, 50]))
    assert sig
    np.testing.assert_allclose(adv, rewards.normalize(np.array([0.5, 0.5, 0.0]))[0])
    # All correct but nothing to shape (every length under T = 1000): no signal.
    assert rewards.length_aware(np.ones(3), np.arange(3))[1] is False
    assert rewards.length_aware(-np.ones(3), np.arange(3))[1] is False


def test_config_validation():
    with pytest.raises(ValueError, match="RewardConfig.scaling"):
        rewards.RewardConfig(scaling="fractions")
    with pytest.raises(ValueError, match="long_cot_min_len"):
        rewards.RewardConfig(long_cot_min_len=9000)
    with pytest.raises(ValueError, match="label_free"):
        rewards.RewardConfig(label_free="yes")
    with pytest.raises(ValueError, match="scaling"):
        rewards.unit_test_rewards(GEN, np.ones(4, bool), scaling="any")


def test_bad_input_errors():
    with pytest.raises(ValueError, match="gt_passed: .*no ground-truth"):
        rewards.code_rewards(np.zeros((3, 0), bool))
    with pytest.raises(ValueError, match="gen_passed"):
        rewards.unit_test_rewards(np.zeros(3, bool), np.ones(3, bool))
    with pytest.raises(ValueError, match=r"gt_passed\[1\]: expected shape \(4, t\)"):
        rewards.batch_rewards([GEN, GEN], [GT, GT[:2]])
    with pytest.raises(ValueError, match=r"gt_passed\[0\]: .*no ground-truth"):
        rewards.batch_rewards([GEN], [np.zeros((4, 0), bool)])
    with pytest.raises(ValueError, match=r"gen_passed\[1\]: expected a 2-D array, got shape \(4,\)"):
        rewards.batch_rewards([GEN, GEN[:, 0]], [GT, GT])
    with pytest.raises(ValueError, match=r"gen_passed\[0\]: expected a 2-D array"):
        rewards.batch_rewards([GEN[:, 0], GEN[:, 1]], [GT, GT])
    with pytest.raises(ValueError, match=r"code_parsed: expected 2 entries"):
        rewards.batch_rewards([GEN, GEN], [GT, GT], code_parsed=[np.ones(4, bool)])
    with pytest.raises(ValueError, match=r"test_parsed\[0\]"):
        rewards.batch_rewards([GEN], [GT], test_parsed=[np.ones(3, bool)])
    with pytest.raises(ValueError, match="test_lengths"):
        rewards.batch_rewards([GEN], [GT], rewards.RewardConfig(long_cot_tests=True))


def test_batch_hand_worked_ragged():
    # Problem 0: the mixed one. Problem 1: no code correct. Problem 2: no generated tests.
    gen = [GEN, B([[1, 0], [0, 1]]), np.zeros((3, 0), bool)]
    gt = [GT, B([[0], [0]]), B([[1], [0], [1]])]
    out = rewards.batch_rewards(gen, gt)
    assert out.code_offsets.tolist() == [0, 4, 6, 9]
    assert out.test_offsets.tolist() == [0, 5, 7, 7]
    assert out.code_problem.tolist() == [0] * 4 + [1] * 2 + [2] * 3
    np.testing.assert_allclose(out.tests_of(0, "test_raw"), EXPECTED["fraction"])
    assert out.tests_of(1, "test_defined").tolist() == [False, False]
    assert out.tests_of(1, "test_has_signal").tolist() == [False, False]
    assert np.all(out.tests_of(1) == 0)
    # Problem 1's codes all score 0: no signal, but the rows stay in the record.
    assert out.codes_of(1, "code_has_signal").tolist() == [False, False]
    assert out.codes_of(2, "code_has_signal").all()
    np.testing.assert_allclose(out.codes_of(2), [1.0, -2.0, 1.0] / np.std([1, 0, 1]) / 3, rtol=1e-6)
    assert out.stats["problems_without_correct_code"] == 1.0
    assert out.stats["problems_with_code_signal"] == 2.0
    assert out.stats["problems_with_test_signal"] == 1.0
    assert out.code_advantage.dtype == np.float32 and out.test_advantage.dtype == np.float32


def test_batch_long_cot_and_label_free():
    gen = [GEN]
    cfg = rewards.RewardConfig(long_cot_tests=True)
    lengths = [np.array([1200, 3000, 1500, 400, 900])]
    out = rewards.batch_rewards(gen, [GT], cfg, test_lengths=lengths)
    exp, sig = rewards.length_aware(np.array(EXPECTED["fraction"]), lengths[0])
    assert sig and out.test_has_signal.all()
    np.testing.assert_allclose(out.test_advantage, exp, rtol=1e-5, atol=1e-6)
    # Label-free ignores ground truth entirely.
    out = rewards.batch_rewards(gen, None, rewards.RewardConfig(label_free=True))
    raw, pseudo = rewards.label_free_code_rewards(GEN)
    np.testing.assert_allclose(out.code_raw, raw, rtol=1e-6)
    assert out.code_correct.tolist() == pseudo.tolist()
    with pytest.raises(ValueError, match="gt_passed: required"):
        rewards.batch_rewards(gen, None)


# ----------------------------------------------------------------------------- properties

def _table(n_max=8, m_max=8, t_max=4):
    return st.tuples(
        st.integers(1, n_max), st.integers(0, m_max), st.integers(1, t_max)
    ).flatmap(
        lambda s: st.tuples(
            hnp.arrays(bool, (s[0], s[1])), hnp.arrays(bool, (s[0], s[2])),
            hnp.arrays(bool, (s[1],)), hnp.arrays(bool, (s[0],)),
        )
    )


@settings(max_examples=150, deadline=None)
@given(_table(), st.sampled_from(rewards.SCALINGS))
def test_property_discriminating_test_is_best(table, scaling):
    gen, gt, _, _ = table
    _, correct = rewards.code_rewards(gt)
    if not correct.any():
        return
    perfect = correct[:, None]  # accepts every correct code, rejects every wrong one
    r = rewards.unit_test_rewards(np.concatenate([gen, perfect], axis=1), correct, scaling)
    assert r[-1] >= r.max() - 1e-12


@settings(max_examples=150, deadline=None)
@given(_table(), st.randoms(use_true_random=False), st.sampled_from(rewards.SCALINGS))
def test_property_permuting_codes(table, rnd, scaling):
    gen, gt, tparsed, cparsed = table
    perm = np.array(rnd.sample(range(gen.shape[0]), gen.shape[0]))
    raw, correct = rewards.code_rewards(gt)
    raw_p, correct_p = rewards.code_rewards(gt[perm])
    np.testing.assert_array_equal(raw_p, raw[perm])
    np.testing.assert_array_equal(correct_p, correct[perm])
    # Test rewards do not depend on the order of the codes.
    a = rewards.unit_test_rewards(gen, correct, scaling, test_parsed=tparsed, code_parsed=cparsed)
    b = rewards.unit_test_rewards(gen[perm], correct[perm], scaling, test_parsed=tparsed, code_parsed=cparsed[perm])
    assert (a is None) == (b is None)
    if a is not None:
        np.testing.assert_allclose(a, b)


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.float64, st.integers(0, 20), elements=st.floats(-100, 100)))
def test_property_normalize_zero_mean_unit_std(raw):
    z, sig = rewards.normalize(raw)
    assert z.shape == raw.shape
    if sig:
        assert abs(z.mean()) < 1e-9
        assert abs(z.std() - 1.0) < 1e-9
        assert np.all(np.diff(z[np.argsort(raw, kind="stable")]) >= -1e-12)  # order kept
    else:
        assert np.all(z == 0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_table(), min_size=1, max_size=6),
    st.sampled_from(rewards.SCALINGS),
    st.booleans(),
    st.booleans(),
)
def test_property_batch_matches_per_problem(tables, scaling, label_free, long_cot):
    gen = [t[0] for t in tables]
    gt = [t[1] for t in tables]
    tp = [t[2] for t in tables]
    cp = [t[3] for t in tables]
    # Lengths with ties, some under long_cot_min_len, some over long_cot_max_len.
    tl = [(np.arange(g.shape[1]) * 7 % 5) * 900.0 + 300 for g in gen]
    cl = [(np.arange(g.shape[0])[::-1] * 3 % 4) * 2500.0 + 50 for g in gen]
    cfg = rewards.RewardConfig(
        scaling=scaling, label_free=label_free, long_cot_tests=long_cot, long_cot_codes=long_cot
    )
    out = rewards.batch_rewards(
        gen, gt, cfg, code_parsed=cp, test_parsed=tp, test_lengths=tl, code_lengths=cl
    )
    for i in range(len(tables)):
        if label_free:
            raw, correct = rewards.label_free_code_rewards(gen[i], tp[i], cp[i])
        else:
            raw, correct = rewards.code_rewards(rewards.mask_unparsed(gt[i], cp[i]))
        np.testing.assert_allclose(out.codes_of(i, "code_raw"), raw, rtol=1e-6)
        assert out.codes_of(i, "code_correct").tolist() == correct.tolist()
        z, sig = rewards.length_aware(raw, cl[i]) if long_cot else rewards.normalize(raw)
        np.testing.assert_allclose(out.codes_of(i), z, rtol=1e-5, atol=1e-5)
        assert out.codes_of(i, "code_has_signal").tolist() == [sig] * len(raw)
        r = rewards.unit_test_rewards(gen[i], correct, scaling, test_parsed=tp[i], code_parsed=cp[i])
        if r is None:
            assert not out.tests_of(i, "test_defined").any()
            assert not out.tests_of(i, "test_has_signal").any()
            continue
        np.testing.assert_allclose(out.tests_of(i, "test_raw"), r, rtol=1e-6)
        z, sig = rewards.length_aware(r, tl[i]) if long_cot else rewards.normalize(r)
        np.testing.assert_allclose(out.tests_of(i), z, rtol=1e-5, atol=1e-5)
        assert out.tests_of(i, "test_has_signal").tolist() == [sig] * len(r)
