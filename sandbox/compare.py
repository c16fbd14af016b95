"""The one output comparator of the project.

Rule (CURE's whitespace-token rule): both outputs are split into whitespace-separated tokens
(so CRLF vs LF, trailing spaces and trailing blank lines never matter) and the token sequences
must be equal, token by token. Tokens are compared as exact strings: no case folding, no set or
sorting fallback, no rounding, integers are exact whatever their size ("-0" is not "0").

Opt-in float tolerance (``float_tol``): where the *expected* token is a real-number literal that
is not an integer (it has a '.', an exponent, or is inf/nan), the actual token must parse as a
float ``a`` with |a - e| <= float_tol * max(1, |e|) (absolute for small values, relative for large).
"""
from __future__ import annotations

import math
import re

__all__ = ["outputs_match", "tokens_match"]

_INT_RE = re.compile(r"[+-]?\d+\Z")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)\Z",
                       re.IGNORECASE)


def _float_token_match(actual: str, expected: str, tol: float) -> bool:
    if _INT_RE.match(expected) or not _FLOAT_RE.match(expected):
        return False  # integers and non-numbers are compared exactly (already unequal)
    if not _FLOAT_RE.match(actual):
        return False
    e, a = float(expected), float(actual)
    if math.isnan(e) or math.isnan(a):
        return math.isnan(e) and math.isnan(a)
    if math.isinf(e) or math.isinf(a):
        return a == e
    return abs(a - e) <= tol * max(1.0, abs(e))


def tokens_match(actual: list[str], expected: list[str], *, float_tol: float | None = None) -> bool:
    """Token-by-token equality of two token lists (see module docstring)."""
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected):
        if a != e and (float_tol is None or not _float_token_match(a, e, float_tol)):
            return False
    return True


def outputs_match(actual: str, expected: str, *, float_tol: float | None = None) -> bool:
    """True when ``actual`` program output matches the ``expected`` output of a test."""
    if actual == expected:
        return True
    if float_tol is not None and not (float_tol > 0 and math.isfinite(float_tol)):
        raise ValueError(f"float_tol must be a positive finite number, got {float_tol!r}")
    return tokens_match(actual.split(), expected.split(), float_tol=float_tol)
