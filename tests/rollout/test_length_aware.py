"""Long-CoT advantages (rollout.rewards.length_aware) against the reference's formulas.

``_reference`` below is an independent, plain-loop rendering of the authors' ``reward.py``
(``length_regularize(normalize_reward(R))`` with ``enable_efficient``) as the formulas in the
rollout.rewards docstring state it: exact rational arithmetic for the normalisation (whether
every reward is 1, whether the std is 0, the sign of each reward against the mean), float64
loops for the length shaping. It returns None where the reference gives nothing (drops the group).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout import rewards

SQ3 = math.sqrt(3.0)


def _reference(raw: list[Fraction], lengths, lo: float = 1000.0, hi: float = 8000.0):
    n = len(raw)
    if n == 0:
        return None
    if all(r == 1 for r in raw):  # normalize_reward keeps an all-correct group as all 1s
        sign = [1] * n
    else:
        mean = sum(raw, Fraction(0)) / n
        if sum((r - mean) ** 2 for r in raw) == 0:
            return None
        sign = [(r > mean) - (r < mean) for r in raw]
    pos = [i for i in range(n) if sign[i] == 1]
    neg = [i for i in range(n) if sign[i] == -1]
    if not pos:
        return None
    lp = sorted(float(lengths[i]) for i in pos)
    if lp[0] == lp[-1]:  # no length variance among the positives: the sign itself
        x = [float(s) for s in sign]
    else:
        k = len(lp)
        med = lp[k // 2] if k % 2 else (lp[k // 2 - 1] + lp[k // 2]) / 2
        t = max(min(med, hi), lo)
        x = [0.0] * n
        for i in pos:
            x[i] = t - float(lengths[i])
        low = min(0.0, min(x[i] for i in pos))
        for i in neg:
            x[i] = low
    s_up = sum(v for v in x if v > 0)
    s_dn = -sum(v for v in x if v < 0)
    if s_up == 0 or s_dn == 0:
        return None
    x = [v * (s_dn / s_up) if v > 0 else v for v in x]
    mu = sum(x) / n
    sd = math.sqrt(sum((v - mu) ** 2 for v in x) / n)
    return [v / sd for v in x]


def _plain(raw: list[Fraction]):
    """The plain z-score (population std) in loops, or None without signal."""
    n = len(raw)
    mean = sum(raw, Fraction(0)) / n
    var = sum((r - mean) ** 2 for r in raw) / n
    if var == 0:
        return None
    sd = math.sqrt(var)
    return [float(r - mean) / sd for r in raw]


def _check(raw: list[Fraction], lengths, lo: float = 1000.0, hi: float = 8000.0) -> str:
    """Ours against the reference; returns which case the group fell in."""
    adv, sig = rewards.length_aware(np.array([float(r) for r in raw]), np.asarray(lengths), lo, hi)
    ref = _reference(raw, lengths, lo, hi)
    if ref is not None:
        assert sig is True
        np.testing.assert_allclose(adv, ref, rtol=1e-9, atol=1e-9)
        return "all-correct" if all(r == 1 for r in raw) else "shaped"
    plain = _plain(raw)
    if plain is None:
        assert sig is False and np.all(adv == 0)
        return "no-signal"
    assert sig is True
    np.testing.assert_allclose(adv, plain, rtol=1e-9, atol=1e-9)
    return "plain"


# ----------------------------------------------------------------------------- hand-worked

def test_issue_example():
    # z = ([1, 1, .5, 0] - .625) / std > 0 on the two 1s. T = median(3000, 4000) = 3500:
    # x = [500, -500, min(0, -500), -500]; balance 1500 / 500 = 3 -> [1500, -500, -500, -500],
    # std = sqrt((1500^2 + 3 * 500^2) / 4) = 500 sqrt(3): [sqrt3, -1/sqrt3, -1/sqrt3, -1/sqrt3].
    # (The old rule, raw > 0 and a centred z-score, gave [0.12, -0.86, 1.59, -0.86]: the short,
    # half-passing wrong program on top.)
    adv, sig = rewards.length_aware(np.array([1.0, 1.0, 0.5, 0.0]), np.array([3000, 4000, 1500, 2000]))
    assert sig
    np.testing.assert_allclose(adv, [SQ3, -1 / SQ3, -1 / SQ3, -1 / SQ3])
    # The same through batch_rewards, as code rewards (2 ground-truth tests).
    gt = np.array([[1, 1], [1, 1], [1, 0], [0, 0]], bool)
    out = rewards.batch_rewards([np.zeros((4, 0), bool)], [gt], rewards.RewardConfig(long_cot_codes=True),
                                code_lengths=[np.array([3000, 4000, 1500, 2000])])
    np.testing.assert_allclose(out.code_advantage, [SQ3, -1 / SQ3, -1 / SQ3, -1 / SQ3], rtol=1e-6)
    assert out.code_has_signal.all()


def test_all_correct_group_is_shaped():
    # All 1s: every response positive. T = median = 2500: x = [1500, 500, -500, -1500], balance
    # 2000 / 2000 = 1, std = sqrt(5e6 / 4) = 500 sqrt(5): [3, 1, -1, -3] / sqrt(5).
    adv, sig = rewards.length_aware(np.ones(4), np.array([1000, 2000, 3000, 4000]))
    assert sig
    np.testing.assert_allclose(adv, np.array([3.0, 1.0, -1.0, -3.0]) / math.sqrt(5))
    # In a batch: the all-correct code group now carries signal (it used to be dropped) and
    # test rewards all 1 (each test passes both codes, there is no wrong code) are shaped too.
    cfg = rewards.RewardConfig(long_cot_codes=True, long_cot_tests=True)
    out = rewards.batch_rewards([np.ones((4, 4), bool)], [np.ones((4, 2), bool)], cfg,
                                code_lengths=[np.array([1000, 2000, 3000, 4000])],
                                test_lengths=[np.array([4000, 3000, 2000, 1000])])
    np.testing.assert_allclose(out.code_advantage, np.array([3, 1, -1, -3]) / math.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(out.test_advantage, np.array([-3, -1, 1, 3]) / math.sqrt(5), rtol=1e-6)
    assert out.code_has_signal.all() and out.test_has_signal.all()
    # Without long-CoT the same group has no signal.
    out = rewards.batch_rewards([np.ones((4, 4), bool)], [np.ones((4, 2), bool)])
    assert not out.code_has_signal.any() and not out.test_has_signal.any()


def test_tie_with_the_mean_and_single_positive():
    # [1, 1, .5, 0, 0]: mean .5, so the .5 is a tie (sign 0, x = 0). T = median(1500, 2500) = 2000:
    # x = [500, -500, 0, -500, -500]; balance 1500 / 500 = 3 -> [1500, -500, 0, -500, -500],
    # std = sqrt(3e6 / 5) = 200 sqrt(15): [sqrt15 / 2, -sqrt15 / 6, 0, -sqrt15 / 6, -sqrt15 / 6].
    adv, sig = rewards.length_aware(np.array([1.0, 1.0, 0.5, 0.0, 0.0]), np.array([1500, 2500, 100, 3000, 4000]))
    q = math.sqrt(15.0)
    assert sig
    np.testing.assert_allclose(adv, [q / 2, -q / 6, 0.0, -q / 6, -q / 6], atol=1e-12)
    # One positive: no length variance, so x = sign = [1, -1, -1, -1]; balance 3 -> [3, -1, -1, -1],
    # std = sqrt(12 / 4): [sqrt3, -1/sqrt3, -1/sqrt3, -1/sqrt3], whatever the lengths.
    adv, sig = rewards.length_aware(np.array([1.0, 0.0, 0.0, 0.0]), np.array([5000, 100, 200, 300]))
    assert sig
    np.testing.assert_allclose(adv, [SQ3, -1 / SQ3, -1 / SQ3, -1 / SQ3])


def test_threshold_clipped_to_max_len():
    # T = median(7000, 9000, 10000) = 9000 clipped to 8000: x = [1000, -1000, -2000, -2000];
    # balance 5000 / 1000 = 5 -> [5000, -1000, -2000, -2000], std = sqrt(34e6 / 4).
    adv, sig = rewards.length_aware(np.array([1.0, 1.0, 1.0, 0.0]), np.array([7000, 9000, 10000, 50]))
    assert sig
    np.testing.assert_allclose(adv, np.array([5000, -1000, -2000, -2000]) / math.sqrt(8.5e6))


@pytest.mark.parametrize("raw,lengths", [
    ([1, 1, 0], [300, 600, 9000]),        # T clipped up to 1000: every x >= 0, the negative gets 0
    ([1, 1, 0], [9000, 10000, 100]),      # T clipped down to 8000: every positive x < 0
    ([1, 1, 1, 0], [2000, 2000, 3000, 100]),  # the shortest positive is the median: no x > 0
    ([1, 1, 1, 0], [1000, 3000, 3000, 100]),  # the longest positive is the median: no x < 0
])
def test_reference_undefined_falls_back_to_plain_normalised(raw, lengths):
    raw = np.array(raw, float)
    assert _reference([Fraction(r) for r in raw], lengths) is None
    adv, sig = rewards.length_aware(raw, np.array(lengths))
    assert sig
    np.testing.assert_allclose(adv, rewards.normalize(raw)[0])


@pytest.mark.parametrize("raw,lengths", [
    ([1, 1, 1], [2000, 2000, 2000]),  # all correct, one length: no negatives to balance against
    ([1], [3000]),                    # a single response
    ([1, 1], [500, 900]),             # all correct, all under the clip: nothing is penalised
    ([0.5, 0.5], [100, 9000]),        # equal rewards that are not all 1
    ([0.1, 0.1, 0.1], [1, 2, 3]),     # equal rewards whose float std is 1.4e-17, not 0
    ([], []),
])
def test_no_signal(raw, lengths):
    adv, sig = rewards.length_aware(np.array(raw, float), np.array(lengths))
    assert sig is False and adv.shape == (len(raw),) and np.all(adv == 0)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="lengths"):
        rewards.length_aware(np.ones(3), np.ones(2))


# ----------------------------------------------------------------------------- properties

LENGTH_MODES = ("uniform", "few", "equal", "short", "long")


def _lengths(rng: np.random.Generator, n: int, mode: str) -> np.ndarray:
    if mode == "uniform":
        return rng.integers(0, 12000, n)
    if mode == "few":  # ties, and the clip bounds themselves
        return rng.choice([300, 1000, 2500, 2500, 4000, 8000, 9500], n)
    if mode == "equal":
        return np.full(n, rng.integers(0, 12000))
    if mode == "short":
        return rng.integers(0, 1200, n)
    return rng.integers(7000, 12000, n)


def _groups(rng: np.random.Generator, scaling: str) -> list[list[Fraction]]:
    """Raw code and test rewards (exact) of one random problem."""
    n, m, t = int(rng.integers(1, 17)), int(rng.integers(1, 17)), int(rng.integers(1, 9))
    p_gt = rng.choice([0.0, 0.3, 0.7, 0.95, 1.0])
    gt = rng.random((n, t)) < p_gt
    gen = rng.random((n, m)) < rng.choice([0.1, 0.5, 0.9, 1.0])
    codes = [Fraction(int(row.sum()), t) for row in gt]
    correct = gt.all(axis=1)
    out = [codes]
    if correct.any():
        wrong = ~correct
        n_w = int(wrong.sum())
        tests = []
        for k in range(m):
            c = int(all(gen[j, k] for j in range(n) if correct[j]))
            a = sum(int(gen[j, k]) for j in range(n) if wrong[j])
            if scaling == "count":
                tests.append(Fraction(c * n_w - a))
            elif n_w == 0:
                tests.append(Fraction(2 * c - 1))
            elif scaling == "fraction":
                tests.append(c - Fraction(a, n_w))
            else:
                tests.append(Fraction(c - int(a > 0)))
        out.append(tests)
    return out


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(rewards.SCALINGS), st.sampled_from(LENGTH_MODES))
def test_property_matches_reference(seed, scaling, mode):
    rng = np.random.default_rng(seed)
    for raw in _groups(rng, scaling):
        _check(raw, _lengths(rng, len(raw), mode))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 3000), st.integers(0, 9000))
def test_property_matches_reference_any_clip(seed, lo, span):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 10))
    raw = [Fraction(int(v), 4) for v in rng.integers(-4, 5, n)]
    if rng.random() < 0.3:
        raw = [Fraction(1)] * n
    _check(raw, _lengths(rng, n, str(rng.choice(LENGTH_MODES))), float(lo), float(lo + span))


def test_sweep_covers_every_case():
    """A fixed sweep of random problems reaches every case, all-correct groups included."""
    rng = np.random.default_rng(0)
    seen: dict[str, int] = {}
    for i in range(600):
        scaling = rewards.SCALINGS[i % len(rewards.SCALINGS)]
        for raw in _groups(rng, scaling):
            case = _check(raw, _lengths(rng, len(raw), LENGTH_MODES[i % len(LENGTH_MODES)]))
            seen[case] = seen.get(case, 0) + 1
    assert set(seen) == {"shaped", "all-correct", "plain", "no-signal"}, seen


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(rewards.SCALINGS), st.sampled_from(LENGTH_MODES))
def test_property_batch_matches_reference(seed, scaling, mode):
    rng = np.random.default_rng(seed)
    P = int(rng.integers(1, 6))
    gen, gt, cl, tl = [], [], [], []
    for _ in range(P):
        n, m, t = int(rng.integers(1, 9)), int(rng.integers(0, 9)), int(rng.integers(1, 5))
        gt.append(rng.random((n, t)) < rng.choice([0.5, 0.9, 1.0]))
        gen.append(rng.random((n, m)) < rng.choice([0.3, 0.8, 1.0]))
        cl.append(_lengths(rng, n, mode))
        tl.append(_lengths(rng, m, mode))
    cfg = rewards.RewardConfig(scaling=scaling, long_cot_codes=True, long_cot_tests=True)
    out = rewards.batch_rewards(gen, gt, cfg, code_lengths=cl, test_lengths=tl)
    for i in range(P):
        raw, correct = rewards.code_rewards(gt[i])
        z, sig = rewards.length_aware(raw, cl[i])
        np.testing.assert_allclose(out.codes_of(i), z, rtol=1e-5, atol=1e-6)
        assert out.codes_of(i, "code_has_signal").tolist() == [sig] * len(raw)
        ref = _reference([Fraction(int(r.sum()), r.size) for r in gt[i]], cl[i])
        if ref is not None:
            np.testing.assert_allclose(out.codes_of(i), ref, rtol=1e-5, atol=1e-6)
        r = rewards.unit_test_rewards(gen[i], correct, scaling)
        if r is None:
            assert not out.tests_of(i, "test_has_signal").any()
            continue
        z, sig = rewards.length_aware(r, tl[i])
        np.testing.assert_allclose(out.tests_of(i), z, rtol=1e-5, atol=1e-6)
        assert out.tests_of(i, "test_has_signal").tolist() == [sig] * len(r)
