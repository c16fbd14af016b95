r"""CURE rewards from the execution matrix (numpy only).

For one problem, ``n`` sampled codes run against ``m`` generated unit tests and ``t``
ground-truth tests, giving the boolean execution matrix :math:`B \in \{0,1\}^{n \times (m+t)}`;
:math:`B^{gen}` is its first ``m`` columns, :math:`B^{gt}` the last ``t``.

Code reward and correctness (code :math:`j`):

.. math::
    R_{code}(j) = \frac{1}{t}\sum_{l=1}^{t} B^{gt}_{jl}, \qquad
    I_j = \prod_{l=1}^{t} B^{gt}_{jl}

(the paper counts passed tests; the reference divides by :math:`t`; the two differ by a constant
factor per problem, so their normalised rewards are identical.)

Unit-test reward (test :math:`k`, defined only when some code is correct). With the wrong codes
:math:`W = \{j\ \mathrm{parsed} : I_j = 0\}`, :math:`n_w = |W|`, the number of wrong codes the test accepts
:math:`a_k = \sum_{j\in W} B^{gen}_{jk}` and
:math:`c_k = \prod_{j : I_j = 1} B^{gen}_{jk}` (1 when the test accepts every correct code):

- ``"count"`` (the paper's formula):
  :math:`R_{test}(k) = -\sum_j (1-I_j) B^{gen}_{jk} + c_k \sum_j (1-I_j) = c_k\,n_w - a_k`
- ``"fraction"`` (the reference): :math:`R_{test}(k) = c_k - a_k / n_w`, and
  :math:`2c_k - 1` (i.e. +1 / -1) when :math:`n_w = 0`
- ``"binary"`` (the later-stage any()/all() variant):
  :math:`R_{test}(k) = c_k - \mathbb{1}[a_k > 0]`, and :math:`2c_k - 1` when :math:`n_w = 0`

so a test that accepts every correct code earns what it rejects of the wrong codes and one that
rejects a correct code loses what it accepts of them.

Per-problem normalisation (codes and tests separately), population std :math:`\sigma`:
:math:`A_i = (R_i - \bar R) / \sigma`; a group with :math:`\sigma \le \epsilon` (or an undefined
reward) carries no signal: its advantages are 0 and it is flagged ``has_signal=False`` (kept in
the record, never silently dropped). With long-CoT on, an all-correct group can still carry
signal (see below).

Unparsed responses (ONE rule, used by training and evaluation alike, see :func:`mask_unparsed`):
an unparsed response is never executed. An unparsed code's row is all False (it fails every
test, so :math:`R_{code}=0`, :math:`I=0`). An unparsed test's column is all False (no code passes
it, so it is never "accurate" and never sways best-of-n), and its reward is the lowest the
scaling can give (:func:`min_test_reward`), so a format failure never outscores a real test.
Unparsed codes are not counted among the wrong codes :math:`W` when scoring tests (there is no
program for a test to reject), and unparsed tests are not opponents when scoring codes in
label-free mode.

Label-free mode (no ground truth): codes are scored against the parsed generated tests,
:math:`R_{code}(j) = \frac{1}{m'}\sum_{k\,parsed} B^{gen}_{jk}`, and the pseudo-correct codes are
those passing the most generated tests (every code tied at that maximum, and only when it is
> 0): the codes among which best-of-n picks. Tests are then rewarded against that pseudo-correctness.

Long-CoT length-aware advantages (optional, per group and per role: the reference's
``enable_efficient``, applied to codes and to tests; :func:`length_aware`). From the raw rewards
:math:`R` and the response lengths :math:`\ell` of one group, the reference
(``reward.py``: ``length_regularize(normalize_reward(R))``) computes:

1. :math:`z = R` when every :math:`R_i = 1` (an all-correct group is kept), else the z-score of
   :math:`R`; none when :math:`\sigma = 0`.
2. :math:`s = \mathrm{sign}(z)`: positives :math:`P = \{s = 1\}` (above the group mean),
   negatives :math:`N = \{s = -1\}`, ties with the mean (:math:`s = 0`) in neither.
3. If every :math:`\ell_i, i \in P`, is the same (one positive included): :math:`x = s`. Else
   :math:`T = \mathrm{clip}(\mathrm{median}_{i\in P}\,\ell_i, \ell_{lo}, \ell_{hi})` (an even count
   takes the mean of the two middle lengths), :math:`x_i = T - \ell_i` on :math:`P`, :math:`x_i = \min(0, \min_{j\in P} x_j)` on
   :math:`N`, :math:`x_i = 0` on ties.
4. Balance: :math:`U = \{x > 0\}`, :math:`D = \{x < 0\}`, :math:`x_U \mathrel{*}= |\sum_D x| /
   \sum_U x`, then :math:`A = x / \mathrm{std}(x)` (the balance makes :math:`\sum x = 0`, so this is a
   z-score). The factor is positive whenever it is defined; it is undefined, and the reference
   drops the group, when :math:`U` or :math:`D` is empty: in step 3's first case when
   :math:`N` is empty (an all-correct group whose positives share one length); in its second
   when no positive is shorter than :math:`T` (e.g. all of them at least :math:`\ell_{hi}`, or the
   shortest one is the median) or none is longer (e.g. all at most :math:`\ell_{lo}`: then
   :math:`N` gets 0 too).

Ours equals that wherever it is defined. Where it is not, the group gets the plain normalised
reward (correctness without length shaping: signal iff :math:`\sigma > \epsilon`), so
switching long-CoT on never drops a group that carries signal, and keeps all-correct groups
whose lengths can be shaped. Two rounding guards: :math:`\sigma \le \epsilon` counts as
zero (the reference's ``std == 0`` misses equal non-dyadic rewards, e.g. the std of three
rewards of 0.1 is 1.4e-17, and would turn rounding noise into advantages of about 1), and
:math:`|z_i| \le 10^{-9}` counts as a tie (the exact sign of :math:`R_i - \bar R`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rollout.contract.sections import EPS, SCALINGS, RewardConfig

__all__ = [
    "SCALINGS",
    "BatchRewards",
    "RewardConfig",
    "batch_rewards",
    "code_rewards",
    "label_free_code_rewards",
    "length_aware",
    "mask_unparsed",
    "min_test_reward",
    "normalize",
    "unit_test_rewards",
]

Scaling = Literal["fraction", "count", "binary"]


def _bool2d(x: object, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [codes, tests] matrix, got shape {a.shape}")
    if a.dtype != np.bool_:
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name}: expected booleans (0/1), got values outside {{0, 1}}")
        a = a.astype(bool)
    return a


def _mask1d(x: object | None, n: int, name: str) -> np.ndarray:
    if x is None:
        return np.ones(n, dtype=bool)
    a = np.asarray(x, dtype=bool)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {a.shape}")
    return a


def mask_unparsed(
    passed: np.ndarray,
    code_parsed: np.ndarray | None = None,
    test_parsed: np.ndarray | None = None,
) -> np.ndarray:
    """THE unparsed rule for the execution matrix: rows of unparsed codes and columns of
    unparsed tests become all False (never executed, so nothing passes).

    ``passed`` is bool [n_codes, n_tests]; ``test_parsed`` applies only to generated tests
    (ground-truth tests are always parsed). Returns a new array; used by training
    (:func:`batch_rewards`) and evaluation (:func:`rollout.metrics.evaluate_table`) alike.
    """
    out = _bool2d(passed, "passed").copy()
    if code_parsed is not None:
        out &= _mask1d(code_parsed, out.shape[0], "code_parsed")[:, None]
    if test_parsed is not None:
        out &= _mask1d(test_parsed, out.shape[1], "test_parsed")[None, :]
    return out


def code_rewards(gt_passed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Raw code rewards and correctness from bool [n_codes, n_gt]:
    :math:`R_{code}(j) = \frac1t\sum_l B^{gt}_{jl}`, :math:`I_j = \prod_l B^{gt}_{jl}`.

    Returns (float64 [n_codes], bool [n_codes]). A problem without ground-truth tests cannot
    score codes: ValueError (use label-free mode for that).
    """
    b = _bool2d(gt_passed, "gt_passed")
    if b.shape[1] == 0:
        raise ValueError("gt_passed: the problem has no ground-truth tests; use label-free mode")
    return b.mean(axis=1), b.all(axis=1)


def label_free_code_rewards(
    gen_passed: np.ndarray,
    test_parsed: np.ndarray | None = None,
    code_parsed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Label-free code rewards against the model's own (parsed) tests, bool [n_codes, m]:
    :math:`R(j) = \frac{1}{m'}\sum_{k\,parsed} B_{jk}`; pseudo-correct :math:`I_j = [R(j) =
    \max_i R(i) > 0]`. With no parsed test every reward is 0 and no code is pseudo-correct.
    Unparsed codes and tests follow :func:`mask_unparsed`.
    """
    b = mask_unparsed(gen_passed, code_parsed, test_parsed)
    tp = _mask1d(test_parsed, b.shape[1], "test_parsed")
    m = int(tp.sum())
    if m == 0 or b.shape[0] == 0:
        return np.zeros(b.shape[0]), np.zeros(b.shape[0], dtype=bool)
    counts = (b & tp[None, :]).sum(axis=1)
    best = counts.max()
    return counts / m, (counts == best) & (best > 0)


def min_test_reward(scaling: Scaling, n_wrong: int) -> float:
    """Lowest unit-test reward ``scaling`` can give with ``n_wrong`` wrong codes (the reward of
    an unparsed test): -n_wrong for "count", -1 for "fraction" and "binary"."""
    _check_scaling(scaling)
    return float(-n_wrong) if scaling == "count" else -1.0


def _check_scaling(scaling: str) -> None:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling: expected one of {SCALINGS}, got {scaling!r}")


def unit_test_rewards(
    gen_passed: np.ndarray,
    correct: np.ndarray,
    scaling: Scaling = "fraction",
    *,
    code_parsed: np.ndarray | None = None,
    test_parsed: np.ndarray | None = None,
) -> np.ndarray | None:
    r"""Raw unit-test rewards, float64 [n_tests], or None when no code is correct.

    ``gen_passed`` bool [n_codes, n_tests]; ``correct`` bool [n_codes] (:math:`I_j`).
    With :math:`c_k = \prod_{I_j=1} B_{jk}`, :math:`a_k = \sum_{j \in W} B_{jk}`, :math:`n_w=|W|`:
    count :math:`c_k n_w - a_k`; fraction :math:`c_k - a_k/n_w`; binary
    :math:`c_k - [a_k>0]`; fraction and binary give :math:`2c_k-1` when :math:`n_w=0`.
    Unparsed tests get :func:`min_test_reward`; unparsed codes are not in :math:`W`
    (see :func:`mask_unparsed`; this function applies it).
    """
    _check_scaling(scaling)
    b = _bool2d(gen_passed, "gen_passed")
    n, m = b.shape
    ok = _mask1d(correct, n, "correct")
    cp = _mask1d(code_parsed, n, "code_parsed")
    tp = _mask1d(test_parsed, m, "test_parsed")
    ok = ok & cp
    if not ok.any():
        return None
    b = mask_unparsed(b, cp, tp)
    wrong = cp & ~ok
    n_w = int(wrong.sum())
    c = b[ok].all(axis=0).astype(np.float64)
    a = b[wrong].sum(axis=0).astype(np.float64)
    if scaling == "count":
        r = c * n_w - a
    elif n_w == 0:
        r = 2.0 * c - 1.0
    elif scaling == "fraction":
        r = c - a / n_w
    else:
        r = c - (a > 0)
    return np.where(tp, r, min_test_reward(scaling, n_w))


def normalize(raw: np.ndarray, eps: float = EPS) -> tuple[np.ndarray, bool]:
    r"""Per-group z-score with population std: :math:`(R - \bar R)/\sigma`.

    Returns (float64 [k], has_signal). ``has_signal`` is False (and the array all zeros) for an
    empty group, a group with :math:`\sigma \le \epsilon`, or any non-finite reward.
    """
    r = np.asarray(raw, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"raw: expected a 1-D group of rewards, got shape {r.shape}")
    if r.size == 0 or not np.isfinite(r).all():
        return np.zeros(r.shape), False
    sd = r.std()
    if sd <= eps:
        return np.zeros(r.shape), False
    return (r - r.mean()) / sd, True


_TIE = 1e-9  # |z| at most this is a tie with the group mean (sign 0), not rounding noise


def length_aware(
    raw: np.ndarray,
    lengths: np.ndarray,
    lo: float = 1000.0,
    hi: float = 8000.0,
    eps: float = EPS,
) -> tuple[np.ndarray, bool]:
    r"""Long-CoT length-aware advantages for one group: the reference's
    ``length_regularize(normalize_reward(raw))`` with ``enable_efficient`` (module docstring).

    - :math:`z = R` if every :math:`R_i = 1`, else :math:`(R - \bar R)/\sigma`;
      :math:`s = \mathrm{sign}(z)`, :math:`P = \{s=1\}`, :math:`N = \{s=-1\}`.
    - :math:`x = s` if the lengths on :math:`P` are all equal; else
      :math:`T = \mathrm{clip}(\mathrm{median}_P\,\ell, lo, hi)`, :math:`x = T - \ell` on :math:`P`,
      :math:`\min(0, \min_P x)` on :math:`N`, 0 on ties.
    - :math:`x_{x>0} \mathrel{*}= |\sum_{x<0} x| / \sum_{x>0} x`; advantage :math:`x/\mathrm{std}(x)`.

    Where the reference is undefined (:math:`\sigma \le \epsilon` and not all ones, or no :math:`x > 0`
    or no :math:`x < 0`), the plain :func:`normalize` of ``raw``. Returns (float64 [k], has_signal):
    has_signal is True when the advantages are the reference's shaped ones or plain normalised
    ones with signal, False (all zeros) otherwise: a group with :math:`\sigma \le \epsilon` that
    is not an all-correct group the reference can shape.
    """
    r = np.asarray(raw, dtype=np.float64)
    ln = np.asarray(lengths, dtype=np.float64)
    if r.shape != ln.shape or r.ndim != 1:
        raise ValueError(f"lengths: expected shape {r.shape} like raw, got {ln.shape}")
    z, sig = normalize(r, eps)
    ones = r.size > 0 and bool(np.all(r == 1.0))
    if not (sig or ones):
        return z, False
    s = np.ones(r.shape) if ones else np.sign(z) * (np.abs(z) > _TIE)
    pos, neg = s > 0, s < 0
    lp = ln[pos]
    if lp.min() == lp.max():
        x = s.copy()
    else:
        t = float(np.clip(np.median(lp), lo, hi))
        x = np.zeros(r.shape)
        x[pos] = t - lp
        x[neg] = min(0.0, float((t - lp).min()))
    up, dn = x > 0, x < 0
    s_up, s_dn = float(x[up].sum()), float(-x[dn].sum())
    if s_up <= 0 or s_dn <= 0:  # a side is empty: the reference drops the group
        return z, sig
    x[up] *= s_dn / s_up
    return x / x.std(), True


@dataclass(frozen=True)
class BatchRewards:
    """Per-response rewards of a batch, flattened in problem order (codes of problem 0, then of
    problem 1, ...; tests likewise). ``*_offsets`` [P+1] delimit each problem's slice.

    ``*_raw``: the raw reward (tests: 0.0 where undefined, see ``test_defined``);
    ``*_advantage``: the normalised reward given to every token of the response (0 without signal);
    ``*_has_signal``: the response's group carries signal (per response, broadcast from its problem).
    """

    code_raw: np.ndarray
    code_correct: np.ndarray
    code_advantage: np.ndarray
    code_has_signal: np.ndarray
    code_problem: np.ndarray
    code_offsets: np.ndarray
    test_raw: np.ndarray
    test_defined: np.ndarray
    test_advantage: np.ndarray
    test_has_signal: np.ndarray
    test_problem: np.ndarray
    test_offsets: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)

    def codes_of(self, i: int, name: str = "code_advantage") -> np.ndarray:
        """One problem's slice of a per-code array (default: advantages)."""
        return getattr(self, name)[self.code_offsets[i] : self.code_offsets[i + 1]]

    def tests_of(self, i: int, name: str = "test_advantage") -> np.ndarray:
        """One problem's slice of a per-test array (default: advantages)."""
        return getattr(self, name)[self.test_offsets[i] : self.test_offsets[i + 1]]


def _arrays(seq: Sequence[object], name: str, ndim: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The per-problem arrays of ``seq`` and their shapes [P, ndim]; wrong ranks are a ValueError."""
    arrs = [a if type(a) is np.ndarray else np.asarray(a) for a in seq]
    try:
        shapes = np.array([a.shape for a in arrs], dtype=np.int64).reshape(len(arrs), -1)
    except ValueError:  # ranks differ between problems
        shapes = None
    if shapes is None or (arrs and shapes.shape[1] != ndim):
        i = next(i for i, a in enumerate(arrs) if a.ndim != ndim)
        raise ValueError(f"{name}[{i}]: expected a {ndim}-D array, got shape {arrs[i].shape}")
    return arrs, shapes.reshape(len(arrs), ndim)


def _pad(arrays: list[np.ndarray], shapes: np.ndarray, width: tuple[int, ...], dtype: type) -> np.ndarray:
    """Stack 1-D or 2-D arrays (``shapes`` [P, ndim]) into a zero-padded [P, *width] array.

    Uniform shapes take one concatenate; ragged ones one slice assignment per problem (faster
    than a vectorised scatter at these sizes).
    """
    P = len(arrays)
    if P == 0 or 0 in width:
        return np.zeros((P, *width), dtype=dtype)
    if (shapes == np.asarray(width)[None, :]).all():
        return np.concatenate(arrays).reshape(P, *width).astype(dtype, copy=False)
    out = np.zeros((P, *width), dtype=dtype)
    if len(width) == 1:
        for i, a in enumerate(arrays):
            out[i, : a.shape[0]] = a
    else:
        for i, a in enumerate(arrays):
            out[i, : a.shape[0], : a.shape[1]] = a
    return out


def _per_problem_1d(
    seq: Sequence[object] | None, name: str, sizes: np.ndarray, width: int, dtype: type
) -> np.ndarray | None:
    """Validate a per-problem list of 1-D arrays against ``sizes`` and pad it to [P, width]."""
    if seq is None:
        return None
    if len(seq) != len(sizes):
        raise ValueError(f"{name}: expected {len(sizes)} entries (one per problem), got {len(seq)}")
    arrs, shapes = _arrays(seq, name, 1)
    bad = np.flatnonzero(shapes[:, 0] != sizes)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}]: expected shape ({sizes[i]},), got {arrs[i].shape}")
    return _pad(arrs, shapes, (width,), dtype)


def _masked_z(r: np.ndarray, mask: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise z-score over ``mask`` (population std). Returns (advantages, has_signal [P])."""
    n = mask.sum(axis=1)
    safe_n = np.maximum(n, 1)
    rm = np.where(mask, r, 0.0)
    mean = rm.sum(axis=1) / safe_n
    dev = np.where(mask, r - mean[:, None], 0.0)
    sd = np.sqrt((dev * dev).sum(axis=1) / safe_n)
    sig = (n > 0) & (sd > eps)
    inv = np.divide(1.0, sd, out=np.zeros_like(sd), where=sig)
    return dev * inv[:, None], sig


def _masked_length_aware(
    r: np.ndarray, ln: np.ndarray, mask: np.ndarray, lo: float, hi: float, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise :func:`length_aware` on padded arrays (same steps, vectorised over problems)."""
    if r.shape[1] == 0:
        return np.zeros(r.shape), np.zeros(r.shape[0], dtype=bool)
    z, sig = _masked_z(r, mask, eps)
    ones = mask.any(axis=1) & (~mask | (r == 1.0)).all(axis=1)
    live = (sig | ones)[:, None] & mask
    zr = np.where(ones[:, None], 1.0, z)
    pos = live & (zr > _TIE)
    neg = live & (zr < -_TIE)
    s = pos.astype(np.float64) - neg
    n_pos = pos.sum(axis=1)
    same = np.where(pos, ln, -np.inf).max(axis=1) == np.where(pos, ln, np.inf).min(axis=1)
    srt = np.sort(np.where(pos, ln, np.inf), axis=1)
    k = np.maximum(n_pos, 1)
    lo_i = ((k - 1) // 2)[:, None]
    hi_i = (k // 2)[:, None]
    med = 0.5 * (np.take_along_axis(srt, lo_i, 1) + np.take_along_axis(srt, hi_i, 1))[:, 0]
    t = np.clip(np.where(n_pos > 0, med, lo), lo, hi)
    vp = t[:, None] - ln
    vneg = np.minimum(np.where(pos, vp, np.inf).min(axis=1), 0.0)
    v = np.where(pos, vp, np.where(neg, vneg[:, None], 0.0))
    x = np.where(same[:, None], s, v)
    up, dn = x > 0, x < 0
    s_up = np.where(up, x, 0.0).sum(axis=1)
    s_dn = -np.where(dn, x, 0.0).sum(axis=1)
    shaped = (s_up > 0) & (s_dn > 0)
    x = np.where(up, x * np.divide(s_dn, s_up, out=np.ones_like(s_up), where=shaped)[:, None], x)
    n = np.maximum(mask.sum(axis=1), 1)
    dev = np.where(mask, x - (x.sum(axis=1) / n)[:, None], 0.0)
    sd = np.sqrt((dev * dev).sum(axis=1) / n)
    a = x / np.where(shaped, sd, 1.0)[:, None]
    return np.where(shaped[:, None], a, z), shaped | sig


def batch_rewards(
    gen_passed: Sequence[np.ndarray],
    gt_passed: Sequence[np.ndarray] | None,
    config: RewardConfig = RewardConfig(),
    *,
    code_parsed: Sequence[np.ndarray] | None = None,
    test_parsed: Sequence[np.ndarray] | None = None,
    code_lengths: Sequence[np.ndarray] | None = None,
    test_lengths: Sequence[np.ndarray] | None = None,
) -> BatchRewards:
    """Rewards and advantages for a whole batch of problems in one vectorised pass.

    Per problem ``p``: ``gen_passed[p]`` bool [n_p, m_p] (codes x generated tests),
    ``gt_passed[p]`` bool [n_p, t_p] (codes x ground-truth tests; may be None in label-free
    mode), optional ``code_parsed[p]`` bool [n_p], ``test_parsed[p]`` bool [m_p] and token
    lengths ``code_lengths[p]`` [n_p], ``test_lengths[p]`` [m_p] (needed by the long-CoT
    options). Numbers of codes and tests may differ between problems. Same formulas as
    :func:`code_rewards`, :func:`unit_test_rewards`, :func:`normalize` and :func:`length_aware`.
    """
    P = len(gen_passed)
    if not config.label_free and gt_passed is None:
        raise ValueError("gt_passed: required unless RewardConfig.label_free is set")
    gp, g_shapes = _arrays(gen_passed, "gen_passed", 2)
    n_codes, n_tests = g_shapes[:, 0], g_shapes[:, 1]
    C = int(n_codes.max(initial=0))
    T = int(n_tests.max(initial=0))
    code_mask = np.arange(C)[None, :] < n_codes[:, None]
    test_mask = np.arange(T)[None, :] < n_tests[:, None]
    cp = _per_problem_1d(code_parsed, "code_parsed", n_codes, C, bool)
    tp = _per_problem_1d(test_parsed, "test_parsed", n_tests, T, bool)
    cp = code_mask if cp is None else cp & code_mask
    tp = test_mask if tp is None else tp & test_mask
    G = _pad(gp, g_shapes, (C, T), bool)
    G &= cp[:, :, None] & tp[:, None, :]

    # Code rewards and (pseudo-)correctness.
    if config.label_free:
        m_parsed = tp.sum(axis=1)
        counts = G.sum(axis=2)
        code_raw = counts / np.maximum(m_parsed, 1)[:, None]
        best = np.where(code_mask, counts, -1).max(axis=1, initial=-1)
        correct = code_mask & (counts == best[:, None]) & (best[:, None] > 0)
    else:
        if len(gt_passed) != P:
            raise ValueError(f"gt_passed: expected {P} entries (one per problem), got {len(gt_passed)}")
        hp, h_shapes = _arrays(gt_passed, "gt_passed", 2)
        bad = np.flatnonzero((h_shapes[:, 0] != n_codes) | (h_shapes[:, 1] == 0))
        if bad.size:
            i = int(bad[0])
            if h_shapes[i, 1] == 0:
                raise ValueError(f"gt_passed[{i}]: the problem has no ground-truth tests; use label-free mode")
            raise ValueError(f"gt_passed[{i}]: expected shape ({n_codes[i]}, t), got {hp[i].shape}")
        n_gt = h_shapes[:, 1]
        Gt = int(n_gt.max(initial=0))
        gt_mask = np.arange(Gt)[None, :] < n_gt[:, None]
        H = _pad(hp, h_shapes, (C, Gt), bool)
        H &= cp[:, :, None]
        code_raw = H.sum(axis=2) / n_gt[:, None]
        correct = code_mask & (H | ~gt_mask[:, None, :]).all(axis=2) & cp
    correct = correct & cp

    # Unit-test rewards.
    wrong = cp & ~correct
    n_w = wrong.sum(axis=1)
    has_correct = correct.any(axis=1)
    c = (G | ~correct[:, :, None]).all(axis=1)  # accepts every correct code
    a = (G & wrong[:, :, None]).sum(axis=1)  # wrong codes accepted
    cf = c.astype(np.float64)
    nwf = n_w[:, None].astype(np.float64)
    if config.scaling == "count":
        r = cf * nwf - a
        floor = -nwf
    else:
        if config.scaling == "fraction":
            r = cf - a / np.maximum(nwf, 1.0)
        else:
            r = cf - (a > 0)
        r = np.where(nwf == 0, 2.0 * cf - 1.0, r)
        floor = np.full_like(nwf, -1.0)
    r = np.where(tp, r, floor)
    test_defined = test_mask & has_correct[:, None]
    test_raw = np.where(test_defined, r, 0.0)

    # Normalisation: z-score per problem, or the long-CoT length-aware transform when asked.
    def _normalise(raw, mask, lengths, n, width, name, flag):
        if not getattr(config, flag):
            return _masked_z(raw, mask, config.eps)
        ln = _per_problem_1d(lengths, name, n, width, np.float64)
        if ln is None:
            raise ValueError(f"{name}: required when RewardConfig.{flag} is set")
        return _masked_length_aware(raw, ln, mask, config.long_cot_min_len,
                                    config.long_cot_max_len, config.eps)

    code_adv, code_sig = _normalise(code_raw, code_mask, code_lengths, n_codes, C,
                                    "code_lengths", "long_cot_codes")
    test_adv, test_sig = _normalise(test_raw, test_mask, test_lengths, n_tests, T,
                                    "test_lengths", "long_cot_tests")
    test_sig = test_sig & has_correct
    test_adv = np.where(test_sig[:, None], test_adv, 0.0)

    pid = np.arange(P, dtype=np.int32)[:, None]
    code_problem = np.broadcast_to(pid, (P, C))[code_mask]
    test_problem = np.broadcast_to(pid, (P, T))[test_mask]
    n_c_total = int(n_codes.sum())
    n_t_total = int(n_tests.sum())
    stats = {
        "problems": float(P),
        "code_reward_mean": float(code_raw[code_mask].mean()) if n_c_total else 0.0,
        "code_correct_rate": float(correct.sum() / n_c_total) if n_c_total else 0.0,
        "code_parse_rate": float(cp.sum() / n_c_total) if n_c_total else 0.0,
        "test_parse_rate": float(tp.sum() / n_t_total) if n_t_total else 0.0,
        "test_reward_mean": float(test_raw[test_defined].mean()) if test_defined.any() else 0.0,
        "problems_with_code_signal": float(code_sig.sum()),
        "problems_with_test_signal": float(test_sig.sum()),
        "problems_without_correct_code": float((~has_correct).sum()),
        "problems_all_codes_correct": float(((correct.sum(axis=1) == n_codes) & (n_codes > 0)).sum()),
    }
    return BatchRewards(
        code_raw=code_raw[code_mask].astype(np.float32),
        code_correct=correct[code_mask],
        code_advantage=code_adv[code_mask].astype(np.float32),
        code_has_signal=np.broadcast_to(code_sig[:, None], (P, C))[code_mask],
        code_problem=code_problem,
        code_offsets=np.concatenate([[0], np.cumsum(n_codes)]).astype(np.int64),
        test_raw=test_raw[test_mask].astype(np.float32),
        test_defined=test_defined[test_mask],
        test_advantage=test_adv[test_mask].astype(np.float32),
        test_has_signal=np.broadcast_to(test_sig[:, None], (P, T))[test_mask],
        test_problem=test_problem,
        test_offsets=np.concatenate([[0], np.cumsum(n_tests)]).astype(np.int64),
        stats=stats,
    )
