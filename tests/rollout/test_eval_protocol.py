"""Evaluation protocols (issue 15, item 3): the reference's evaluation reproduced.

- the metrics under the paper's protocol equal, wherever the reference defines them, an
  independent loop implementation of the reference's formulas (written below from its
  evaluation: tests that do not parse dropped before execution, problems without a parsed test
  skipped, at most 8 ground-truth tests, accumulate accuracies, BoN on the first m parsed
  tests, mean response lengths), on random tables;
- both unit-test conventions (all sampled tests / parsed tests only) against loops, whichever
  protocol scores;
- the protocol's expansion (cure-eval's config, the training ``eval`` section, explicit fields
  winning), the reference's prompt format rendered exactly, metrics.json / results.md carrying
  the new keys and rows end to end, and the exact merge of the new counts over hosts.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout import evaluate as ev
from rollout import metrics
from rollout.contract import protocol
from rollout.contract.config import ConfigError
from rollout.contract.sections import EvalConfig, ServerConfig
from rollout.contract.stats import merge_eval_metrics
from rollout.eval_settings import EvalSettings
from rollout.experience_maker import ExperienceMaker
from rollout.problems import Problem, embedded_problems
from rollout.prompts import REFERENCE_API_SYSTEM, PromptBuilder, PromptConfig
from tests.helpers.scripted_rollout import (
    CORRECT,
    NO_TEST,
    TEST_HEADER,
    ScriptedEngine,
    sandbox_fixture,
)
from tests.rollout.contract.test_stats import _splits


# ------------------------------------------------------------------ the reference's formulas
def _div(a: float, b: float) -> float | None:
    return a / b if b else None  # the reference prints 0 (or fails) on an empty denominator


def reference_metrics(problems: list[dict], pairs: list[tuple[int, int]],
                      max_test: int = 8) -> dict:
    """The reference's evaluation numbers, by loops. A problem: ``gen`` [n][m] (code j on
    sampled test k, as executed when both parsed), ``gt`` [n][t], ``code_parsed`` [n],
    ``test_parsed`` [m], ``code_len`` [n], ``test_len`` [m]."""
    s = dict.fromkeys(("code", "code_num", "code_acc", "code_acc_num", "case", "case_num",
                       "case_acc", "case_acc_num", "p01_fail", "p01_num", "p00", "p00_num"), 0)
    bon = {pair: [0, 0, 0, 0] for pair in pairs}  # score, problems, gt passed, gt tests
    code_lens, test_lens = [], []
    for P in problems:
        code_lens += list(P["code_len"])
        test_lens += list(P["test_len"])
        n = len(P["code_parsed"])
        tests = [k for k, ok in enumerate(P["test_parsed"]) if ok]  # dropped before execution
        if not tests:
            continue  # no parsed test: the problem is skipped
        t = min(len(P["gt"][0]), max_test)

        def case(j, k, P=P, tests=tests):  # an unparsed code runs as a placeholder: it fails
            return bool(P["code_parsed"][j]) and bool(P["gen"][j][tests[k]])

        def test(j, l, P=P):
            return bool(P["code_parsed"][j]) and bool(P["gt"][j][l])

        correct = [j for j in range(n) if all(test(j, l) for l in range(t))]
        s["code"] += len(correct)
        s["code_num"] += n
        s["code_acc"] += sum(test(j, l) for j in range(n) for l in range(t))
        s["code_acc_num"] += n * t
        if correct:
            good = [k for k in range(len(tests)) if all(case(j, k) for j in correct)]
            s["case"] += len(good)
            s["case_num"] += len(tests)
            s["case_acc"] += sum(case(j, k) for j in correct for k in range(len(tests)))
            s["case_acc_num"] += len(correct) * len(tests)
            wrong = [j for j in range(n) if j not in correct]
            bad = [k for k in range(len(tests)) if k not in good]
            if wrong and good:
                s["p01_fail"] += sum(not case(j, k) for j in wrong for k in good)
                s["p01_num"] += len(wrong) * len(good)
            if wrong and bad:
                s["p00"] += sum(case(j, k) for j in wrong for k in bad)
                s["p00_num"] += len(wrong) * len(bad)
        for nn, mm in pairs:
            scores = [sum(case(j, k) for k in range(min(mm, len(tests)))) for j in range(nn)]
            best = 0
            for j in range(nn):
                if scores[j] > scores[best]:
                    best = j
            passed = [test(best, l) for l in range(t)]
            b = bon[(nn, mm)]
            b[0] += all(passed)
            b[1] += 1
            b[2] += sum(passed)
            b[3] += t
    key = metrics.bon_key
    return {
        "code_accuracy": _div(s["code"], s["code_num"]),
        "code_accumulate_accuracy": _div(s["code_acc"], s["code_acc_num"]),
        "unit_test_accuracy": _div(s["case"], s["case_num"]),
        "unit_test_accumulate_accuracy": _div(s["case_acc"], s["case_acc_num"]),
        "p_01": None if not s["p01_num"] else 1 - s["p01_fail"] / s["p01_num"],
        "p_00": _div(s["p00"], s["p00_num"]),
        "bon": {key(*p): _div(b[0], b[1]) for p, b in bon.items()},
        "bon_accumulate": {key(*p): _div(b[2], b[3]) for p, b in bon.items()},
        "mean_code_length": _div(sum(code_lens), len(code_lens)),
        "mean_test_length": _div(sum(test_lens), len(test_lens)),
    }


def unit_test_both_ways(problems: list[dict], max_test: int = 8) -> tuple:
    """(all sampled tests, parsed tests only) unit-test accuracies by loops, over every problem
    with a correct code (those without a parsed test included: 0 of m, or 0 of 0)."""
    accurate = all_tests = parsed = 0
    for P in problems:
        n, m = len(P["code_parsed"]), len(P["test_parsed"])
        t = min(len(P["gt"][0]), max_test)
        ok = [j for j in range(n) if P["code_parsed"][j] and all(P["gt"][j][:t])]
        if not ok:
            continue
        for k in range(m):
            if P["test_parsed"][k] and all(P["gen"][j][k] for j in ok):
                accurate += 1
        all_tests += m
        parsed += sum(bool(x) for x in P["test_parsed"])
    return _div(accurate, all_tests), _div(accurate, parsed)


def _close(got, want, path=""):
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (tuple, list)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{path}[{i}]")
    elif want is None:
        assert got is None, path
    else:
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), path


def _random_problems(seed: int, P: int, n: int, m: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(P):
        t = int(rng.integers(1, 12))  # often more than 8: the cap matters
        pt = rng.choice([0.0, 0.3, 0.8, 1.0])  # 0.0: no test parses (the problem is skipped)
        out.append({
            "gen": rng.random((n, m)) < rng.uniform(0.2, 0.9),
            "gt": rng.random((n, t)) < rng.uniform(0.5, 1.0),
            "code_parsed": rng.random(n) < rng.choice([0.6, 1.0]),
            "test_parsed": rng.random(m) < pt,
            "code_len": rng.integers(1, 500, n).tolist(),
            "test_len": rng.integers(1, 500, m).tolist(),
        })
    return out


def _tables(problems, pairs, drop: bool, max_gt: int):
    """What the pipeline scores: executed against the first ``max_gt`` ground-truth tests."""
    return [metrics.evaluate_table(
        P["gen"], P["gt"][:, :max_gt] if max_gt else P["gt"], pairs,
        code_parsed=P["code_parsed"], test_parsed=P["test_parsed"], drop_unparsed_tests=drop,
        code_lengths=P["code_len"], test_lengths=P["test_len"]) for P in problems]


_shapes = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 6),
                    st.integers(1, 6))


@settings(max_examples=60, deadline=None)
@given(_shapes)
def test_paper_protocol_equals_the_reference_formulas(shape):
    seed, P, n, m = shape
    problems = _random_problems(seed, P, n, m)
    pairs = [(a, b) for a in range(1, n + 1) for b in range(m + 1)]
    max_gt = protocol.PAPER["max_gt_tests"]
    agg = metrics.aggregate(_tables(problems, pairs, True, max_gt))
    want = reference_metrics(problems, pairs, max_test=max_gt)
    _close({k: agg[k] for k in want}, want)
    skipped = sum(not np.any(P["test_parsed"]) for P in problems)
    assert agg["problems"] == P - skipped and agg["problems_without_parsed_test"] == skipped
    all_tests, parsed = unit_test_both_ways(problems, max_gt)
    _close((agg["unit_test_accuracy_all_tests"], agg["unit_test_accuracy_parsed_tests"]),
           (all_tests, parsed))


@settings(max_examples=60, deadline=None)
@given(_shapes)
def test_project_protocol_keeps_unparsed_tests_and_reports_both(shape):
    seed, P, n, m = shape
    problems = _random_problems(seed, P, n, m)
    pairs = [(a, b) for a in range(1, n + 1) for b in range(m + 1)]
    agg = metrics.aggregate(_tables(problems, pairs, False, 0))
    all_tests, parsed = unit_test_both_ways(problems, max_test=10**9)
    _close((agg["unit_test_accuracy"], agg["unit_test_accuracy_all_tests"],
            agg["unit_test_accuracy_parsed_tests"]), (all_tests, all_tests, parsed))
    assert agg["problems"] == P and agg["problems_without_parsed_test"] == sum(
        not np.any(P_["test_parsed"]) for P_ in problems)
    # BoN ranks on the first m *sampled* tests (an unparsed one passes nothing); loops:
    for a, b in pairs:
        hits = acc = gts = 0
        for Q in problems:
            cp, tp = Q["code_parsed"], Q["test_parsed"]
            score = [sum(bool(cp[j] and tp[k] and Q["gen"][j][k]) for k in range(b))
                     for j in range(a)]
            best = score.index(max(score))
            row = [bool(cp[best] and x) for x in Q["gt"][best]]
            hits += all(row)
            acc += sum(row)
            gts += len(row)
        assert agg["bon"][metrics.bon_key(a, b)] == pytest.approx(hits / P)
        assert agg["bon_accumulate"][metrics.bon_key(a, b)] == pytest.approx(acc / gts)


def test_bon_prefix_skips_unparsed_tests_by_hand():
    # Test 0 does not parse. Code 0 is wrong but would win on test 1 alone; code 1 is correct
    # and passes tests 2 and 3.
    gen = np.array([[1, 1, 0, 0], [1, 0, 1, 1]], bool)
    gt = np.array([[0, 1], [1, 1]], bool)
    tp = np.array([False, True, True, True])
    kw = {"test_parsed": tp, "code_lengths": [10, 30], "test_lengths": [5, None, 7, 9]}
    paper = metrics.evaluate_table(gen, gt, [(2, 1), (2, 2), (2, 3)], drop_unparsed_tests=True, **kw)
    project = metrics.evaluate_table(gen, gt, [(2, 1), (2, 2), (2, 3)], **kw)
    # dropped: prefixes of tests (1,), (1, 2), (1, 2, 3) -> code 0, tie (lowest: 0), code 1
    assert paper["bon"] == {"2x1": 0.0, "2x2": 0.0, "2x3": 1.0}
    # kept: prefixes (0,), (0, 1), (0, 1, 2) of sampled tests, test 0 passes nobody
    assert project["bon"] == {"2x1": 0.0, "2x2": 0.0, "2x3": 0.0}
    assert paper["bon_acc_sum"] == {"2x1": 1, "2x2": 1, "2x3": 2}
    # unit tests: accurate {2, 3} (code 1 is the correct one); 2 of 3 parsed, 2 of 4 sampled
    assert paper["unit_test_accuracy"] == 2 / 3 and project["unit_test_accuracy"] == 2 / 4
    for r, ut_cells in ((paper, 3), (project, 4)):  # the correct code x the convention's tests
        assert (r["ut_tests_all"], r["ut_tests_parsed"], r["ut_accurate"]) == (4, 3, 2)
        assert (r["gt_cells"], r["gt_cells_passed"]) == (4, 3)
        assert (r["ut_cells"], r["ut_cells_passed"]) == (ut_cells, 2)
        assert (r["code_len_sum"], r["code_len_count"], r["test_len_sum"],
                r["test_len_count"]) == (40, 2, 21, 3)
    agg = metrics.aggregate([paper])
    assert agg["code_accumulate_accuracy"] == 3 / 4 and agg["bon_accumulate"]["2x3"] == 1.0
    assert agg["mean_code_length"] == 20 and agg["mean_test_length"] == 7


def test_problem_without_a_parsed_test():
    gen, gt = np.ones((2, 3), bool), np.array([[1], [0]], bool)
    tp = np.zeros(3, bool)
    paper = metrics.aggregate([metrics.evaluate_table(gen, gt, [(2, 2)], test_parsed=tp,
                                                      drop_unparsed_tests=True,
                                                      code_lengths=[3, 5])])
    assert paper["problems"] == 0 and paper["problems_without_parsed_test"] == 1
    assert paper["code_accuracy"] is None and paper["bon"] == {"2x2": None}
    assert paper["unit_test_accuracy"] is None and paper["unit_test_accuracy_all_tests"] == 0.0
    assert paper["test_parse_rate"] == 0.0 and paper["mean_code_length"] == 4
    project = metrics.aggregate([metrics.evaluate_table(gen, gt, [(2, 2)], test_parsed=tp)])
    assert project["problems"] == 1 and project["code_accuracy"] == 0.5
    assert project["unit_test_accuracy"] == 0.0 and project["bon"] == {"2x2": 1.0}


def test_new_counts_merge_exactly_over_hosts():
    problems = _random_problems(7, 6, 4, 4)
    pairs = [(1, 0), (4, 4), (2, 3)]
    keys = [metrics.bon_key(*p) for p in pairs]
    for drop in (True, False):
        tables = _tables(problems, pairs, drop, 8 if drop else 0)
        want = metrics.aggregate(tables)
        for hosts in (1, 2, 3):
            for parts in _splits(len(tables), hosts):
                merged = merge_eval_metrics([metrics.aggregate([tables[i] for i in part],
                                                               bon_keys=keys) for part in parts])
                assert merged == want, (drop, parts)
    empty = ExperienceMaker._empty_evaluation(EvalConfig(protocol="paper", k_code=4, k_case=4,
                                                         bon=tuple(pairs)))
    assert empty["bon_accumulate"] == dict.fromkeys(keys, None)
    assert set(merge_eval_metrics([empty, empty])) == set(empty)
    host = want | {k: empty[k] for k in empty if k not in want}  # timings, verdicts, faults
    assert merge_eval_metrics([empty, host])["bon_accumulate"] == want["bon_accumulate"]


# ------------------------------------------------------------------ the protocol's expansion
@pytest.mark.parametrize("spec, name", [
    ("LiveBench", "paper"), ("data/LiveBench.json", "paper"), ("MBPP-ReasonFlux", "paper"),
    ("/x/codecontests_test.jsonl", "paper"), ("LiveCodeBench,CodeForces", "paper"),
    ("embedded:eval", "project"), ("LiveBench,embedded:eval", "project"),
    ("CodeContests_train", "project"), ("rollout/assets/tasks/eval.json", "project"), (None, "project"),
])
def test_auto_is_the_paper_for_the_papers_datasets(spec, name):
    assert protocol.resolve("auto", spec) == name
    assert protocol.resolve("project", "LiveBench") == "project"
    with pytest.raises(ValueError, match="protocol: must be one of"):
        protocol.resolve("reference", spec)


def test_what_each_protocol_sets():
    paper = protocol.settings("paper", protocol.PROJECT_CURE_EVAL)
    assert {k: paper[k] for k in protocol.PAPER} == protocol.PAPER
    assert paper["bon"][:2] == ((4, 4), (1, 16)) and (16, 16) in paper["bon"]
    assert len(paper["bon"]) == len(set(paper["bon"])) == 8
    assert protocol.settings("project", protocol.PROJECT_CURE_EVAL) == protocol.PROJECT_CURE_EVAL
    name, s = protocol.expand("auto", "LiveBench", protocol.PROJECT_CURE_EVAL,
                              {"max_tokens": 123, "bon": None})
    assert name == "paper" and s["max_tokens"] == 123 and s["max_gt_tests"] == 8
    with pytest.raises(ValueError, match="nope: not a protocol setting"):
        protocol.expand("paper", None, protocol.PROJECT_TRAINING_EVAL, {"nope": 1})


def test_training_eval_section_resolves_at_the_door():
    cfg = EvalConfig()  # "auto" holds the project's values until resolved
    assert (cfg.protocol, cfg.max_gt_tests, cfg.drop_unparsed_tests, cfg.max_tokens, cfg.bon) == (
        "auto", 0, False, 2048, ((1, 16), (16, 16)))
    paper = EvalConfig(max_tokens=16384, seed=3).resolved("data/LiveBench.json")
    assert (paper.protocol, paper.max_gt_tests, paper.drop_unparsed_tests, paper.max_tokens,
            paper.bon, paper.seed, paper.top_k) == (
        "paper", 8, True, 16384, ((4, 4), (1, 16), (16, 16)), 3, 40)
    assert paper.resolved("embedded:eval") is paper and cfg.resolved().protocol == "project"
    assert EvalConfig(protocol="paper", max_gt_tests=2).max_gt_tests == 2
    srv = ServerConfig.from_spec({"data": {"eval": "LiveBench"}, "eval": {"k_code": 16}})
    assert srv.eval.protocol == "paper" and srv.eval.max_tokens == 10000
    assert ServerConfig.from_spec(json.loads(json.dumps({"data": {"eval": "LiveBench"},
                                                         "eval": {"protocol": "paper"}}))) == srv
    with pytest.raises(ConfigError, match=r"^spec\.eval\.bon: pair \(16, 16\) needs"):
        ServerConfig.from_spec({"data": {"eval": "LiveBench"}, "eval": {"k_code": 4}})
    with pytest.raises(ConfigError, match=r"^eval\.protocol: must be one of"):
        EvalConfig(protocol="reference")


def test_cure_eval_protocol_and_explicit_fields():
    from rollout import eval_main
    from tests.rollout.test_eval_main import _config

    parts = eval_main.build(_config(engine="hf", model="/m", dataset="LiveBench"))
    s, sampling, prompts = parts["settings"], parts["sampling"], parts["prompt_config"]
    assert (s.protocol, s.max_gt_tests, s.drop_unparsed_tests) == ("paper", 8, True)
    assert (4, 4) in s.bon and (16, 16) in s.bon
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_tokens) == (
        0.8, 0.95, 40, 10000)
    assert prompts.mode == "reference" and prompts.show_example_in_test_prompt is False
    parts = eval_main.build(_config(engine="hf", model="/m", dataset="LiveBench",
                                    **{"sandbox.max_gt_tests": 3, "prompts.mode": "chat",
                                       "sampling.max_tokens": 77, "drop_unparsed_tests": False}))
    s = parts["settings"]
    assert (s.protocol, s.max_gt_tests, s.drop_unparsed_tests) == ("paper", 3, False)
    assert parts["sampling"].max_tokens == 77 and parts["prompt_config"].mode == "chat"
    parts = eval_main.build(_config(engine="hf", model="/m", dataset="LiveBench",
                                    protocol="project"))
    assert (parts["settings"].max_gt_tests, parts["sampling"].max_tokens,
            parts["prompt_config"].mode) == (0, 4096, "auto")
    with pytest.raises(ConfigError, match=r"^config\.protocol: must be one of"):
        eval_main.build(_config(engine="hf", model="/m", protocol="exact"))
    code_only = eval_main.build(_config(engine="hf", model="/m", dataset="LiveBench",
                                        single_eval=True, k_case=0))["settings"]
    assert code_only.bon == () and code_only.max_gt_tests == 8  # the reference: no BoN pairs


# ------------------------------------------------------------------ the reference's prompts
QUESTION = "Given n, print n squared.\n\nInput\nOne integer n.\n"
PROBLEM = Problem(task_id="sq", question=QUESTION, test_input=("3\n",), test_output=("9\n",),
                  example_input=("2\n", "5\n"), example_output=("4\n", "25"))
# Written from the reference's format (its evaluation_config.py / optimization_config.py).
REF_CODE_HEAD = ("<|im_start|>You are a helpful assistant help user solve problems. <|im_end|>\n"
                 "<|im_start|>User: You need to think first then write python script. You should "
                 "use input() to input and print() to output in your script. ")
REF_CODE_EVAL = (REF_CODE_HEAD + "Your code should output the results based on the input read "
                 "in, rather than generating the given test example.\nThis is the problem:\n"
                 + QUESTION + " <|im_end|>\n<|im_start|>Assistant: ")
REF_CODE_TRAIN = (REF_CODE_HEAD + "\nThis is the problem:\n" + QUESTION
                  + " <|im_end|>\n<|im_start|>Assistant: ")
REF_TEST_HEAD = ("<|im_start|>You are a helpful assistant help user generate test examples for "
                 "coding tasks. <|im_end|>\n<|im_start|>User: Given a coding task, instead of "
                 "providing the final script, your task is to generate a new test example (both "
                 "input, output and explanation).\nThis is the problem:\n" + QUESTION + "\n\n")
REF_TEST_TAIL = (
    "\nYou need to provide a new test example. A good test example should be completely accurate "
    "and conform to the problem\u2019s format requirements, while also possessing enough "
    "discriminative power to distinguish correct code from incorrect code.\nBefore providing a "
    "test example, you must think carefully and reason step by step to derive an input and "
    "output you are very confident are correct. For example, start by designing an input you can "
    "reliably handle, then compute the output step by step. If you're unsure about the output, "
    "revise or re-design the input to ensure accuracy. Directly providing input/output pairs "
    "without this process is discouraged, as it often results in low accuracy.\nFinally, after "
    "completing these previous thinking and derivation steps (you should not write the final "
    "test example unless you have gone through these steps very thoroughly), you MUST put your "
    "final test example in the following format:\n\n**Test Input:**\n```input here```\n\n"
    "**Test Output:**\n```output here```\n\n**Explanation:**\n\nexplanation here.\n <|im_end|>\n"
    "<|im_start|>Assistant: ")
REF_TEST_EVAL = REF_TEST_HEAD + " " + REF_TEST_TAIL
REF_TEST_TRAIN = (REF_TEST_HEAD + "We already have 2 test samples:\n The inputs are, "
                  "respectively, '2\\n', '5\\n'. The corresponding outputs are '4\\n', '25'."
                  + REF_TEST_TAIL)


def test_reference_prompt_format_exactly():
    b = PromptBuilder(PromptConfig(mode="reference"))
    assert b.code_prompt(PROBLEM, evaluation=True) == REF_CODE_EVAL
    assert b.code_prompt(PROBLEM) == REF_CODE_TRAIN
    assert b.test_prompt(PROBLEM, show_example=False, evaluation=True) == REF_TEST_EVAL
    assert b.test_prompt(PROBLEM) == REF_TEST_TRAIN  # training shows every public example
    one = Problem(task_id="one", question=QUESTION, test_input=("3\n",), test_output=("9\n",),
                  example_input=("2\n",), example_output=("4\n",))
    assert b.test_prompt(one) == (REF_TEST_HEAD + "We already have one test sample:\n Its input "
                                  "is '2\\n'. Its output is '4\\n'." + REF_TEST_TAIL)
    # verbatim: no chat template even with a tokenizer that has one; the API gets it as the
    # user message with the reference's system message
    class Chat:
        chat_template = "x"

        def apply_chat_template(self, *a, **k):
            raise AssertionError("reference mode must not use the chat template")

    assert PromptBuilder(PromptConfig(mode="reference"), Chat()).code_prompt(PROBLEM) == REF_CODE_TRAIN
    assert b.messages(REF_CODE_EVAL) == [{"role": "system", "content": REFERENCE_API_SYSTEM},
                                         {"role": "user", "content": REF_CODE_EVAL}]
    # the project's templates are unchanged by the new variables
    plain = PromptBuilder(PromptConfig(mode="raw"))
    assert plain.code_prompt(PROBLEM, evaluation=True) == plain.code_prompt(PROBLEM)
    assert "2\n" in plain.test_instruction(PROBLEM) and "25" not in plain.test_instruction(PROBLEM)


# ------------------------------------------------------------------ end to end
def test_cure_eval_writes_the_new_metrics_and_rows(tmp_path):
    """The scripted API path of test_evaluate under the paper's protocol and the reference's
    prompts: metrics.json equals the reference's formulas on what was executed; results.md
    has the new columns, the accumulate table and the protocol."""
    from tests.helpers.fake_openai import FakeOpenAI
    from tests.rollout.test_evaluate import BON, CODES, TESTS, _run, answer

    pairs = tuple(dict.fromkeys(((4, 4),) + BON))
    settings_ = EvalSettings(k_code=4, k_case=4, bon=pairs, max_gt_tests=8,
                             drop_unparsed_tests=True, protocol="paper")
    with FakeOpenAI(answer) as srv:
        got = _run(srv, tmp_path, settings=settings_,
                   prompt_config=PromptConfig(mode="reference", show_example_in_test_prompt=False))
    first = srv.ok_requests[0].body["messages"]
    assert first[0] == {"role": "system", "content": REFERENCE_API_SYSTEM}
    assert first[1]["content"].startswith("<|im_start|>You are a helpful assistant help user")
    recs = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    samples = {(r["task_id"], r["kind"], r["index"]): r for r in recs if r["type"] == "sample"}
    problems = []
    for r in (r for r in recs if r["type"] == "exec"):
        tid = r["task_id"]
        code = [samples[(tid, "code", i)] for i in range(4)]
        test = [samples[(tid, "test", k)] for k in range(4)]
        problems.append({
            "gen": [[c == "0" for c in row] for row in r["gen"]],
            "gt": [[c == "0" for c in row] for row in r["gt"]],
            "code_parsed": [c["code"] is not None for c in code],
            "test_parsed": [t["test_input"] is not None for t in test],
            "code_len": [c["response_tokens"] for c in code],
            "test_len": [t["response_tokens"] for t in test]})
    want = reference_metrics(problems, list(pairs))
    m = json.loads((tmp_path / "metrics.json").read_text())["toy"]
    assert m == json.loads(json.dumps(got["toy"]))
    _close({k: m[k] for k in want}, want)
    assert want["mean_code_length"] == pytest.approx(
        np.mean([len(t.split()) for v in CODES.values() for t in v]))
    assert want["mean_test_length"] == pytest.approx(
        np.mean([len(t.split()) for v in TESTS.values() for t in v]))
    assert m["protocol"] == "paper" and m["problems_without_parsed_test"] == 0
    assert m["unit_test_accuracy"] == m["unit_test_accuracy_parsed_tests"] == pytest.approx(5 / 7)
    assert m["unit_test_accuracy_all_tests"] == pytest.approx(5 / 8)  # the project's: 2 unparsed
    table = (tmp_path / "results.md").read_text()
    assert "protocol paper: the first 8 ground-truth tests per problem, unparsed generated " \
           "tests dropped" in table and "prompts reference" in table
    assert "| UT | Code | UT all tests | UT parsed tests | BoN 4x4 |" in table
    assert "| toy | 3 | 71.4 | 25.0 | 62.5 | 71.4 |" in table
    assert "| Dataset | Code acc. | UT acc. | BoN 4x4 acc. |" in table and "| code tokens |" in table
    scalars = ev.summary_scalars({"toy": m})
    assert scalars["eval/toy/bon_accumulate_4x4"] == pytest.approx(m["bon_accumulate"]["4x4"])
    assert "eval/toy/protocol" not in scalars and "eval/toy/mean_code_length" in scalars


def _scripted(codes, tests) -> ScriptedEngine:
    """Fixed responses by kind (the reference's code prompt has no ```python)."""
    return ScriptedEngine(codes, tests, test_marker=TEST_HEADER, exact_n=False, logprob=0.0)


sandbox = sandbox_fixture()


def test_training_evaluation_under_the_paper_protocol(sandbox):
    (p,) = [q for q in embedded_problems("train") if q.task_id == "embedded/sum_of_list"]
    correct, none = CORRECT, NO_TEST
    wrong = "```python\nn = int(input())\nprint(n)\n```"
    good = "**Test Input:**\n```\n3\n1 2 3\n```\n**Test Output:**\n```\n6\n```\n**Explanation:** s"
    bad = "**Test Input:**\n```\n2\n1 2\n```\n**Test Output:**\n```\n2\n```\n**Explanation:** n"
    codes, tests = [correct, wrong, wrong, correct], [none, bad, good, none]
    engine = _scripted(codes, tests)
    builder = PromptBuilder(PromptConfig(mode="reference"))
    maker = ExperienceMaker(engine, sandbox, prompt_builder=builder)
    cfg = EvalConfig(protocol="paper", k_code=4, k_case=4, bon=((4, 1), (4, 4)))
    out = maker.evaluate([p], cfg)
    project = maker.evaluate([p], EvalConfig(k_code=4, k_case=4, bon=((4, 1), (4, 4))))
    assert engine.prompts[0] == builder.code_prompt(p, evaluation=True)  # the eval sentence
    assert "Your code should output the results" in engine.prompts[0]
    # tests 1 (accepts the wrong codes, rejects the correct) and 2 (accurate) parsed
    assert out["unit_test_accuracy"] == 0.5 and project["unit_test_accuracy"] == 0.25
    assert out["unit_test_accuracy_all_tests"] == 0.25 == project["unit_test_accuracy_all_tests"]
    # BoN(4, 1): the first parsed test is "bad" (it accepts the wrong codes): wrong code 1
    # wins; the first sampled test does not parse: every code ties at 0, code 0 (correct)
    assert out["bon"] == {"4x1": 0.0, "4x4": 1.0} and project["bon"] == {"4x1": 1.0, "4x4": 1.0}
    assert out["bon_accumulate"]["4x4"] == 1.0 and out["code_accumulate_accuracy"] >= 0.5
    assert out["mean_code_length"] == np.mean([len(c.encode()) for c in codes])
    assert out["mean_test_length"] == np.mean([len(t.encode()) for t in tests])
    assert merge_eval_metrics([out]) == out
