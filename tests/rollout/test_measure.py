"""rollout.tiny_tasks.measure.score_samples: code accuracy and test validity of response texts,
scored through the one execution matrix with the real sandbox."""
from __future__ import annotations

import pytest

from rollout.problems import Problem
from rollout.tiny_tasks.measure import score_samples

DOUBLE = Problem(task_id="double", question="Read n; print 2*n.", difficulty="double",
                 test_input=("3\n", "0\n"), test_output=("6\n", "0\n"),
                 solutions=("print(2 * int(input()))\n",))


def _fence(code: str) -> str:
    return f"```python\n{code}\n```"


def _test(inp: str, out: str) -> str:
    return f"**Test Input:**\n```\n{inp}\n```\n**Test Output:**\n```\n{out}\n```"


def test_score_samples_counts_correct_codes_and_valid_tests():
    from sandbox import Limits, Sandbox

    codes = [[_fence("print(2 * int(input()))"), _fence("print(int(input()) + 2)"), "no code"],
             [_fence("n = int(input())\nprint(n + n)")]]
    tests = [[_test("2", "4"), _test("5", "7"), "no test"], [_test("1", "2"), _test("4", "9")]]
    with Sandbox(workers=2, limits=Limits(time_s=2.0)) as sb:
        got = score_samples([DOUBLE, DOUBLE], codes, tests, sb)
    assert got["problems"] == 2 and got["codes"] == 4 and got["tests"] == 5
    assert got["code_accuracy"] == pytest.approx(2 / 4)  # the two right programs
    assert got["code_parse_rate"] == pytest.approx(3 / 4)
    assert got["test_validity"] == pytest.approx(2 / 5)  # the reference passes (2,4) and (1,2)
    assert got["test_parse_rate"] == pytest.approx(4 / 5)
    assert got["code_accuracy_by_kind"] == {"double": 0.5}
    with pytest.raises(ValueError):
        score_samples([DOUBLE], codes, tests, sb)
