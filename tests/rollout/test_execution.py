"""rollout.execution: the one builder of the execution matrix, with the real sandbox and real
programs. Known-correct, known-wrong and crashing programs against generated and ground-truth
tests give the hand-worked pass and verdict tables; unparsed codes and tests are all-False
rows/columns and never reach the sandbox; the whole batch is one run_matrices call."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from rollout.execution import NOT_RUN, execute, gt_tests
from rollout.parsing import ParsedCode, ParsedTest
from rollout.problems import Problem

# Read n; print 2n. Ground truth: 3 -> 6, 0 -> 0, 5 -> 10 (max_gt_tests=2 keeps the first two).
DOUBLE = Problem(task_id="double", question="Read n; print 2*n.",
                 test_input=("3\n", "0\n", "5\n"), test_output=("6\n", "0\n", "10\n"),
                 test_time_limit=2.0)
CORRECT = ParsedCode("print(2 * int(input()))\n")
PLUS_TWO = ParsedCode("print(int(input()) + 2)\n")  # right only for n = 2
CRASH = ParsedCode("print(1 // 0)\n")
UNPARSED_CODE = ParsedCode(None, "no code block")
GOOD_TEST = ParsedTest("2\n", "4\n")  # both CORRECT and PLUS_TWO pass it
WRONG_TEST = ParsedTest("5\n", "7\n")  # only PLUS_TWO passes it
UNPARSED_TEST = ParsedTest(None, None, "no test markers")
OK, WA, RE = 0, 1, 5  # sandbox.Verdict values


class RecordingSandbox:
    """The real sandbox, remembering every run_matrices call."""

    def __init__(self, sb):
        self.sb = sb
        self.calls = []

    def run_matrices(self, groups):
        self.calls.append(list(groups))
        return self.sb.run_matrices(groups)


@pytest.fixture(scope="module")
def sandbox():
    from sandbox import Limits, Sandbox

    with Sandbox(workers=2, limits=Limits(time_s=2.0)) as sb:
        yield sb


def test_tables_verdicts_and_counts_of_a_batch(sandbox):
    rec = RecordingSandbox(sandbox)
    problems = [DOUBLE, DOUBLE]
    codes = [[CORRECT, PLUS_TWO, UNPARSED_CODE, CRASH],
             [UNPARSED_CODE, UNPARSED_CODE]]  # nothing to run for problem 1
    tests = [[GOOD_TEST, UNPARSED_TEST, WRONG_TEST], [GOOD_TEST]]
    got = execute(problems, codes, tests, max_gt_tests=2, sandbox=rec)

    np.testing.assert_array_equal(got.gen_passed[0], np.array(
        [[1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 0]], bool))
    np.testing.assert_array_equal(got.gt_passed[0], np.array(
        [[1, 1], [0, 0], [0, 0], [0, 0]], bool))
    N = NOT_RUN
    np.testing.assert_array_equal(got.gen_verdicts[0], [[OK, N, WA], [OK, N, OK], [N, N, N],
                                                        [RE, N, RE]])
    np.testing.assert_array_equal(got.gt_verdicts[0], [[OK, OK], [WA, WA], [N, N], [RE, RE]])
    assert got.gen_passed[0].dtype == bool and got.gen_verdicts[0].dtype == np.int8
    # problem 1: every code unparsed -> all False, nothing executed
    assert got.gen_passed[1].shape == (2, 1) and not got.gen_passed[1].any()
    assert got.gt_passed[1].shape == (2, 2) and not got.gt_passed[1].any()
    assert (got.gen_verdicts[1] == NOT_RUN).all() and (got.gt_verdicts[1] == NOT_RUN).all()
    # 3 executed codes x (2 parsed generated + 2 ground-truth tests) = 12 cells
    assert got.counts == collections.Counter({"OK": 5, "WRONG_ANSWER": 3, "RUNTIME_ERROR": 4})
    assert got.sandbox_errors(0) == got.sandbox_errors(1) == 0

    # One sandbox call for the batch, holding only parsed codes and tests.
    assert len(rec.calls) == 1 and len(rec.calls[0]) == 1
    programs, cases, time_limit = rec.calls[0][0]
    assert programs == [CORRECT.code, PLUS_TWO.code, CRASH.code]
    assert [(c.input, c.output) for c in cases] == [("2\n", "4\n"), ("5\n", "7\n"),
                                                    ("3\n", "6\n"), ("0\n", "0\n")]
    assert time_limit == 2.0


def test_all_ground_truth_tests_and_no_sandbox_call_when_nothing_parses(sandbox):
    assert gt_tests(DOUBLE, 0) == DOUBLE.private_tests() and len(gt_tests(DOUBLE, 0)) == 3
    assert gt_tests(DOUBLE, 1) == [("3\n", "6\n")]
    got = execute([DOUBLE], [[CORRECT, PLUS_TWO]], [[UNPARSED_TEST]], max_gt_tests=0,
                  sandbox=sandbox)
    np.testing.assert_array_equal(got.gt_passed[0], [[1, 1, 1], [0, 0, 0]])
    assert not got.gen_passed[0].any() and (got.gen_verdicts[0] == NOT_RUN).all()

    rec = RecordingSandbox(sandbox)
    got = execute([DOUBLE], [[UNPARSED_CODE]], [[GOOD_TEST]], max_gt_tests=0, sandbox=rec)
    assert rec.calls == [] and not got.counts
    assert got.gen_passed[0].shape == (1, 1) and got.gt_passed[0].shape == (1, 3)
    with pytest.raises(ValueError, match="one of each per problem"):
        execute([DOUBLE], [], [], max_gt_tests=0, sandbox=sandbox)
