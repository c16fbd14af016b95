"""The one comparator: CURE's whitespace-token rule, exact tokens, opt-in float tolerance."""
from __future__ import annotations

import pytest

from sandbox.compare import outputs_match


@pytest.mark.parametrize("actual, expected", [
    ("NO", "YES"),
    ("YES", "NO"),
    ("yes", "YES"),                          # never case-folded
    ("1\n2", "2\n1"),                        # never a set comparison
    ("100000000000000001", "100000000000000000"),  # integers are exact
    ("-0", "0"),                             # "-0" is a different token
    ("1 2 3", "1 2"),
    ("", "0"),
    ("0.30000001", "0.3"),                   # no tolerance unless asked for
    ("3", "3.0"),
    ("1", "1.0000001"),
])
def test_different_outputs_do_not_match(actual, expected):
    assert not outputs_match(actual, expected)


@pytest.mark.parametrize("actual, expected", [
    ("1\r\n2\r\n", "1\n2\n"),                # CRLF
    ("1 2   \n3\t\n", "1 2\n3\n"),          # trailing spaces and tabs
    ("42\n\n\n", "42"),                      # trailing blank lines
    ("42", "42\n"),
    ("  7", "7"),
    ("a  b", "a b"),                         # whitespace-token rule
    ("1\n2", "1 2"),
])
def test_whitespace_differences_match(actual, expected):
    assert outputs_match(actual, expected)


def test_float_tolerance_is_opt_in_and_only_for_float_tokens():
    assert outputs_match("0.30000001", "0.3", float_tol=1e-6)
    assert outputs_match("0.3000000999", "0.3", float_tol=1e-6)
    assert not outputs_match("0.3001", "0.3", float_tol=1e-6)
    assert outputs_match("-0.0", "0.0", float_tol=1e-9)
    assert outputs_match("1e9", "1000000000.5", float_tol=1e-6)       # relative for large values
    assert not outputs_match("1000000001", "1000000000", float_tol=1e-6)  # integers stay exact
    assert not outputs_match("100000000000000001", "100000000000000000", float_tol=1e-6)
    assert not outputs_match("-0", "0", float_tol=1e-6)               # integer tokens: exact
    assert not outputs_match("NO", "0.5", float_tol=1e-6)
    assert not outputs_match("nan", "0.5", float_tol=1e-6)
    assert outputs_match("inf", "inf", float_tol=1e-6)
    assert outputs_match("YES 0.1", "YES 0.1000001", float_tol=1e-5)
    assert not outputs_match("yes 0.1", "YES 0.1", float_tol=1e-5)


def test_bad_tolerance_is_rejected():
    with pytest.raises(ValueError, match="float_tol"):
        outputs_match("1.0", "2.0", float_tol=-1.0)
