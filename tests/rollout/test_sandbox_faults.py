"""Sandbox faults are not rewards (rollout.execution.execute's retry and its callers).

The real sandbox runs every program; a wrapper turns one cell of one chosen problem (the one
whose time limit is FAULTY_TL) into SANDBOX_ERROR, on its first call only (a transient fault)
or on every call (a persistent one). A transient fault is retried and scored as if it never
happened; a persistent one excludes the problem: its rows carry no signal and every score
equals the score of the other problems alone, in training (ExperienceMaker.make), in the
held-out evaluation (ExperienceMaker.evaluate) and in cure-eval (rollout.evaluate), and
per-host statistics with exclusions merge into the whole batch's.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rollout import evaluate as ev
from rollout.contract.stats import (
    ROLLOUT_RULES,
    merge_eval_metrics,
    merge_rollout_stats,
)
from rollout.eval_models import ModelSpec
from rollout.eval_settings import EvalSettings
from rollout.execution import execute
from rollout.experience_maker import EvalConfig, ExperienceMaker, RolloutConfig
from rollout.parsing import ParsedCode, ParsedTest
from rollout.problems import Problem, embedded_problems
from rollout.prompts import PromptBuilder, PromptConfig
from rollout.rewards import RewardConfig
from sandbox import Verdict
from tests.helpers.scripted_rollout import (
    CODES,
    TEST_HEADER,
    TESTS,
    ScriptedEngine,
    sandbox_fixture,
)

FAULTY_TL = 1.5  # the time limit that marks the problem the sandbox fails on

# variant -> (code picks, test picks): signal on both sides (0 and 1, the faulty one), every
# code correct (2), no correct code (3).
SCRIPTS = {0: ([0, 2, 3], [0, 2, 3]), 1: ([0, 2, 2], [0, 1, 2]), 2: ([0, 1, 0], [0, 1, 3]),
           3: ([2, 2, 3], [2, 1, 0])}
FAULTY = 1


def _variant_engine() -> ScriptedEngine:
    """Responses decided by the prompt alone ("Variant i." picks a script): byte tokens,
    log-prob -0.5. Works as a training engine and as cure-eval's local engine."""
    return ScriptedEngine(CODES, TESTS, scripts=SCRIPTS, test_marker=TEST_HEADER)


class FaultySandbox:
    """The real sandbox; the group of the problem with time limit FAULTY_TL gets SANDBOX_ERROR
    in its first program's last (ground-truth) test, on the first ``times`` calls that carry
    it (None: always). Used as a context manager it leaves the real sandbox open."""

    def __init__(self, sb, times: int | None):
        self.sb, self.left = sb, times
        self.calls: list[list] = []

    def run_matrices(self, groups):
        groups = list(groups)
        self.calls.append(groups)
        res = self.sb.run_matrices(groups)
        hit = False
        for (_, _, tl), r in zip(groups, res):
            if tl == FAULTY_TL and (self.left is None or self.left > 0):
                r.verdicts[0, -1] = Verdict.SANDBOX_ERROR
                hit = True
        if hit and self.left is not None:
            self.left -= 1
        return res

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


sandbox = sandbox_fixture()


def _variants() -> list[Problem]:
    (p,) = [q for q in embedded_problems("train") if q.task_id == "embedded/sum_of_list"]
    assert p.test_time_limit != FAULTY_TL
    return [dataclasses.replace(p, task_id=f"{p.task_id}/v{i}", question=f"{p.question}\n\nVariant {i}.",
                                test_time_limit=FAULTY_TL if i == FAULTY else p.test_time_limit)
            for i in SCRIPTS]


def _maker(sb) -> ExperienceMaker:
    cfg = RolloutConfig(k_code=3, k_case=3, max_gt_tests=2, max_tokens=64, seed=7)
    return ExperienceMaker(_variant_engine(), sb, cfg, RewardConfig(scaling="fraction"),
                           PromptBuilder(PromptConfig(mode="raw")))


# Statistics of the rows themselves (lengths, truncation, texts, executed cells, timings):
# the excluded problem's rows are in the batch, so these are not over the scored problems.
ROW_KEYS = {"rows", "code_rows", "test_rows", "prompt_len_mean", "code_len_mean", "code_len_max",
            "test_len_mean", "test_len_max", "truncated_rate", "truncated_rows", "verdicts",
            "executions", "sample_code", "sample_test", "problems_sandbox_error",
            "sandbox_retries", "rows_with_signal", "code_rows_with_signal",
            "test_rows_with_signal"}


def test_execute_retries_only_the_faulted_problems(sandbox):
    prob = Problem(task_id="double", question="Read n; print 2*n.", test_input=("3\n",),
                   test_output=("6\n",), test_time_limit=2.0)
    faulty = dataclasses.replace(prob, task_id="double/f", test_time_limit=FAULTY_TL)
    codes = [[ParsedCode("print(2 * int(input()))\n")]] * 2
    tests = [[ParsedTest("2\n", "4\n")]] * 2
    clean = execute([prob, faulty], codes, tests, max_gt_tests=0, sandbox=sandbox)
    assert clean.retried == clean.excluded == [] and clean.counts == {"OK": 4}

    once = FaultySandbox(sandbox, times=1)
    got = execute([prob, faulty], codes, tests, max_gt_tests=0, sandbox=once)
    assert [len(c) for c in once.calls] == [2, 1] and once.calls[1][0][2] == FAULTY_TL
    assert got.retried == [1] and got.excluded == [] and got.counts == clean.counts
    for a, b in zip(got.gt_verdicts + got.gen_verdicts, clean.gt_verdicts + clean.gen_verdicts):
        np.testing.assert_array_equal(a, b)

    always = FaultySandbox(sandbox, times=None)
    got = execute([prob, faulty], codes, tests, max_gt_tests=0, sandbox=always)
    assert len(always.calls) == 2 and got.retried == got.excluded == [1]
    assert got.sandbox_errors(1) == 1 and got.counts == {"OK": 3, "SANDBOX_ERROR": 1}

    no_retry = FaultySandbox(sandbox, times=1)
    got = execute([prob, faulty], codes, tests, max_gt_tests=0, sandbox=no_retry, retries=0)
    assert len(no_retry.calls) == 1 and got.retried == [] and got.excluded == [1]


def test_a_transient_fault_is_retried_and_scored_normally(sandbox):
    problems = _variants()
    ids = list(range(len(problems)))
    want_arrays, want_stats, _ = _maker(sandbox).make(problems, ids, step=1, version=2)
    box = FaultySandbox(sandbox, times=1)
    arrays, stats, ex = _maker(box).make(problems, ids, step=1, version=2)
    assert len(box.calls) == 2 and len(box.calls[1]) == 1  # only the faulted problem again
    assert ex.retried == [FAULTY] and ex.excluded == []
    assert stats["sandbox_retries"] == 1 and stats["problems_sandbox_error"] == 0
    for k in want_arrays:
        np.testing.assert_array_equal(arrays[k], want_arrays[k], err_msg=k)
    for k, v in want_stats.items():
        if not k.endswith("_s") and k != "sandbox_retries":
            assert stats[k] == v, k


def test_a_persistent_fault_excludes_the_problem(sandbox):
    problems = _variants()
    ids = [10 + i for i in range(len(problems))]
    # Without the fault the problem has signal on both sides: excluding it changes something.
    clean, _, _ = _maker(sandbox).make(problems, ids, step=1, version=2)
    mine = clean["problem_id"] == 10 + FAULTY
    assert clean["has_signal"][mine].all() and np.abs(clean["advantage"][mine]).max() > 0

    box = FaultySandbox(sandbox, times=None)
    arrays, stats, ex = _maker(box).make(problems, ids, step=1, version=2)
    assert len(box.calls) == 2 and ex.excluded == [FAULTY] and ex.retried == [FAULTY]
    assert stats["problems_sandbox_error"] == 1 and stats["sandbox_retries"] == 1
    assert stats["verdicts"]["SANDBOX_ERROR"] == 1
    # its rows stay in the batch, without signal
    assert mine.sum() == 6 and len(arrays["kind"]) == 24 and stats["rows"] == 24
    assert (arrays["advantage"][mine] == 0).all() and (arrays["has_signal"][mine] == 0).all()
    assert (arrays["reward"][mine] == 0).all()
    assert stats["rows_with_signal"] == int(arrays["has_signal"].sum())

    # every score equals the score of the other problems alone
    keep = [i for i in range(len(problems)) if i != FAULTY]
    others, other_stats, _ = _maker(sandbox).make([problems[i] for i in keep],
                                                  [ids[i] for i in keep], step=1, version=2)
    for k in ("advantage", "reward", "has_signal", "tokens", "kind", "problem_id"):
        np.testing.assert_array_equal(arrays[k][~mine], others[k], err_msg=k)
    assert stats["code_accuracy"] == other_stats["code_accuracy"] == pytest.approx(4 / 9)
    assert stats["problems"] == 3 and stats["counts"]["problems"] == 3
    for k, v in other_stats.items():
        if not k.endswith("_s") and k not in ROW_KEYS:
            assert stats[k] == v, k


def test_every_problem_faulted_gives_no_signal_and_no_scores(sandbox):
    (faulty,) = [p for p in _variants() if p.test_time_limit == FAULTY_TL]
    arrays, stats, ex = _maker(FaultySandbox(sandbox, times=None)).make(
        [faulty, faulty], [3, 4], step=1, version=2)
    assert ex.excluded == [0, 1] and stats["problems_sandbox_error"] == 2
    assert not arrays["has_signal"].any() and not arrays["advantage"].any()
    assert stats["problems"] == 0 and stats["code_accuracy"] is None
    assert stats["code_reward_count"] == stats["code_correct_count"] == 0


def test_evaluation_excludes_and_reports_the_problem(sandbox):
    problems = _variants()
    cfg = EvalConfig(k_code=3, k_case=3, max_gt_tests=2, bon=((1, 1), (3, 3), (2, 0)))
    got = _maker(FaultySandbox(sandbox, times=None)).evaluate(problems, cfg)
    want = _maker(sandbox).evaluate([p for i, p in enumerate(problems) if i != FAULTY], cfg)
    assert got["problems_sandbox_error"] == 1 and got["sandbox_retries"] == 1
    assert want["problems_sandbox_error"] == want["sandbox_retries"] == 0
    assert got["problems"] == 3
    for k, v in want.items():
        if not k.endswith("_s") and k not in ("verdicts", "problems_sandbox_error",
                                              "sandbox_retries"):
            assert got[k] == v, k
    # only faulted problems: no scores, the config's BoN keys, and the count
    (faulty,) = [problems[FAULTY]]
    none = _maker(FaultySandbox(sandbox, times=None)).evaluate([faulty], cfg)
    assert none["problems"] == 0 and none["code_accuracy"] is None
    assert set(none["bon"]) == set(want["bon"]) and none["problems_sandbox_error"] == 1
    assert merge_eval_metrics([got])["problems_sandbox_error"] == 1


def test_cure_eval_excludes_reports_and_redoes_the_problem(tmp_path, sandbox):
    problems = _variants()
    settings = EvalSettings(k_code=3, k_case=3, bon=((1, 1), (3, 3)), max_gt_tests=2)
    spec = ModelSpec(engine="vllm", model="policy")

    def run(out, probs, sb):
        return ev.evaluate({"toy": probs}, spec, out, settings=settings, engine=_variant_engine(),
                           sandbox_factory=lambda: sb, progress=False)["toy"]

    got = run(tmp_path / "faulty", problems, FaultySandbox(sandbox, times=None))
    want = run(tmp_path / "others", [p for i, p in enumerate(problems) if i != FAULTY],
               FaultySandbox(sandbox, times=0))
    assert got["problems_sandbox_error"] == 1 and got["n_problems"] == 3
    assert want["problems_sandbox_error"] == 0
    assert {k: v for k, v in got.items() if k != "problems_sandbox_error"} == \
        {k: v for k, v in want.items() if k != "problems_sandbox_error"}
    metrics = json.loads((tmp_path / "faulty" / "metrics.json").read_text())["toy"]
    assert metrics["problems_sandbox_error"] == 1 and metrics["n_problems"] == 3
    table = (tmp_path / "faulty" / "results.md").read_text()
    assert "| toy | 3 |" in table and "Not scored" in table and "toy 1 problem." in table
    assert "Not scored" not in (tmp_path / "others" / "results.md").read_text()
    recs = [json.loads(x) for x in (tmp_path / "faulty" / "samples.jsonl").read_text().splitlines()]
    execs = {r["task_id"]: r for r in recs if r["type"] == "exec"}
    bad = execs[problems[FAULTY].task_id]
    assert bad["sandbox_errors"] == 1 and bad["sandbox_retried"] is True
    assert sum(r["sandbox_retried"] for r in execs.values()) == 1

    # A re-run with a healthy sandbox executes the faulted problem only and scores it.
    box = FaultySandbox(sandbox, times=0)
    again = run(tmp_path / "faulty", problems, box)
    assert [len(c) for c in box.calls] == [1] and box.calls[0][0][2] == FAULTY_TL
    clean = run(tmp_path / "clean", problems, FaultySandbox(sandbox, times=0))
    assert again == clean and again["n_problems"] == 4 and again["problems_sandbox_error"] == 0


def _assert_same_stats(merged: dict, whole: dict) -> None:
    assert set(merged) == set(whole), set(merged) ^ set(whole)
    for k, want in whole.items():
        if k.endswith("_s"):
            continue
        if isinstance(want, float) and ROLLOUT_RULES.get(k, ("",))[0] in ("mean", "std"):
            assert merged[k] == pytest.approx(want, rel=0, abs=1e-9), k
        else:
            assert merged[k] == want, k


def test_host_stats_with_exclusions_merge_into_the_whole_batch(sandbox):
    problems = _variants()
    maker = _maker(FaultySandbox(sandbox, times=None))

    def make(idx):
        return maker.make([problems[i] for i in idx], idx, step=3, version=9)[1]

    order = [2, FAULTY, 0, 3]
    whole = make(order)
    assert whole["problems_sandbox_error"] == 1 and whole["sandbox_retries"] == 1
    assert whole["scored_code_rows"] == 9 and whole["code_rows"] == 12
    assert whole["code_correct_rate"] == whole["code_accuracy"] == pytest.approx(4 / 9)
    for cut in ([order[:2], order[2:]], [order[:1], order[1:2], order[2:]]):
        hosts = [make(idx) for idx in cut]
        _assert_same_stats(merge_rollout_stats(hosts), whole)
    # a host whose every problem faulted: zero counts, merged as nothing scored
    alone = make([FAULTY])
    assert alone["problems"] == 0 and alone["scored_code_rows"] == 0

    cfg = EvalConfig(k_code=3, k_case=3, max_gt_tests=2, bon=((1, 1), (3, 3)))
    ev_whole = maker.evaluate([problems[i] for i in order], cfg)
    parts = [maker.evaluate([problems[i] for i in idx], cfg)
             for idx in (order[:1], order[1:2], order[2:], [])]
    merged = merge_eval_metrics(parts)
    assert merged["problems_sandbox_error"] == 1 and merged["sandbox_retries"] == 1
    assert {k: v for k, v in merged.items() if not k.endswith("_s")} == \
        {k: v for k, v in ev_whole.items() if not k.endswith("_s")}
