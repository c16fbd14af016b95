"""The refinement rounds of cure-eval (rollout.refine) against a scripted OpenAI-compatible
server on loopback (with injected 429s) and the real sandbox: the accuracy after each round is
known in advance, no ground-truth input reaches the model, rounds resume and extend."""
from __future__ import annotations

import json
import re

import pytest

from rollout import eval_report
from rollout import evaluate as ev
from rollout.engines.api_engine import ApiConfig
from rollout.eval_models import ModelSpec
from rollout.eval_settings import EvalError, EvalSettings, RefineSettings
from rollout.problems import Problem
from rollout.prompts import PromptBuilder, PromptConfig
from rollout.refine import ROUND_SEED_STRIDE
from sandbox import Limits, Sandbox
from tests.helpers.fake_openai import FakeOpenAI

SECRET = 424242  # every ground-truth test holds it; no generated test does


def _problem(task: str, what: str, f) -> Problem:
    ins = (f"{SECRET}\n", "3\n") if task != "add" else (f"{SECRET} 1\n", "3 4\n")
    outs = tuple(f"{f(*map(int, x.split()))}\n" for x in ins)
    return Problem(task_id=task, question=f"TASK={task}. {what}", test_input=ins, test_output=outs)


PROBLEMS = [
    _problem("add", "Read a b; print a+b.", lambda a, b: a + b),
    _problem("double", "Read n; print 2*n.", lambda n: 2 * n),
    _problem("neg", "Read n; print -n.", lambda n: -n),
    _problem("sq", "Read n; print n*n.", lambda n: n * n),
]


def _fence(code: str) -> str:
    return f"Let me think.\n```python\n{code}\n```\n"


def _test(inp: str, out: str) -> str:
    return f"**Test Input:**\n```\n{inp}\n```\n**Test Output:**\n```\n{out}\n```\n**Explanation:**\nok"


AB = "a, b = map(int, input().split())\n"
N = "n = int(input())\n"
CODES = {"add": [AB + "print(a - b)", AB + "print(a * b)"],
         "double": [N + "print(n * n)", N + "print(n + 1)"],
         "neg": [N + "print(-n)", N + "print(-n)"],
         "sq": [N + "print(n * n)", N + "print(n + 2)"]}
TESTS = {"add": [("2 2", "4"), ("1 3", "4")], "double": [("2", "4"), ("3", "6")],
         "neg": [("4", "-4"), ("0", "0")], "sq": [("2", "4"), ("3", "10")]}  # sq's 2nd is wrong
# (task, round) -> the candidates; a request not listed here fails the run (HTTP 500)
REPAIRS = {("add", 1): [AB + "print(a * b)", AB + "print(a + b)"],  # the 2nd passes both
           ("double", 1): [N + "print(n * n)", N + "print(n + n + 1)"],  # best ties: pick stays
           ("double", 2): [N + "print(3 * n)", N + "print(2 * n)"],  # the 2nd passes both
           ("sq", 1): [N + "print(n * n + 1)", N + "print(n * n)"],  # ties (1 pass): pick stays
           ("sq", 2): [N + "print(10 if n == 3 else n * n)", N + "print(n)"]}  # fits the wrong test
# round 0: add (a*b, 1 pass) wrong, double (n*n, 1 pass) wrong, neg right, sq (n*n) right
# round 1: add repaired; double and sq keep their picks; round 2: double repaired, sq's pick
# replaced by a program that passes both generated tests and fails the ground truth
ACCURACY = [2 / 4, 3 / 4, 3 / 4]
REQUESTS_BY_ROUND = [3, 2]


def answer(body: dict) -> str:
    content = body["messages"][-1]["content"]
    task = re.search(r"TASK=(\w+)", content).group(1)
    round_, index = divmod(body["seed"], ROUND_SEED_STRIDE)
    if "Fix the Python program" in content:
        return _fence(REPAIRS[(task, round_)][index])
    if "**Test Input:**" in content:
        return _test(*TESTS[task][index])
    return _fence(CODES[task][index])


def _sandbox():
    return Sandbox(workers=2, limits=Limits(time_s=2.0), isolation="auto")


def _run(srv: FakeOpenAI, out, rounds: int, **kw):
    spec = ModelSpec(engine="api", api=ApiConfig(
        base_url=srv.base_url, model="scripted", key="sk-test", max_concurrency=4,
        backoff_base_s=0.01, backoff_max_s=0.02, max_retries=4))
    return ev.evaluate({"toy": PROBLEMS}, spec, out,
                       settings=EvalSettings(k_code=2, k_case=2, bon=((2, 2),)),
                       refine=RefineSettings(rounds=rounds, k=2, **kw),
                       sandbox_factory=_sandbox, progress=False)


def _repair_requests(srv: FakeOpenAI) -> list[dict]:
    return [r.body for r in srv.ok_requests
            if "Fix the Python program" in r.body["messages"][-1]["content"]]


def test_accuracy_by_round_is_the_scripted_one(tmp_path):
    with FakeOpenAI(answer, faults=[429, 429, None, 429]) as srv:
        got = _run(srv, tmp_path, rounds=2)["toy"]
    ref = got["refine"]
    assert ref["accuracy"] == pytest.approx(ACCURACY)
    assert ref["accuracy"][0] == got["bon"]["2x2"]  # round 0 is the BoN pick
    assert ref["repair_requests_by_round"] == REQUESTS_BY_ROUND
    assert ref["repair_requests"] == sum(REQUESTS_BY_ROUND)
    assert (ref["problems"], ref["problems_sandbox_error"]) == (4, 0)
    assert sum(r.status == 429 for r in srv.log) == 3

    # each request drew k = 2 candidates; none was ever shown a ground-truth test
    repairs = _repair_requests(srv)
    assert len(repairs) == 2 * sum(REQUESTS_BY_ROUND)
    for r in srv.ok_requests:
        assert str(SECRET) not in json.dumps(r.body)
    # add's round-1 prompt shows its pick (a * b), the generated test it fails and the output
    add = [b["messages"][-1]["content"] for b in repairs if "TASK=add" in b["messages"][-1]["content"]]
    assert len(add) == 2 and "print(a * b)" in add[0]
    assert "1 3" in add[0] and "```\n4\n```" in add[0] and "```\n3\n```" in add[0]

    # the samples log keeps every round: candidates, the feedback shown, their verdicts
    recs = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in recs if r["type"] == "sample"}
    assert kinds == {"code", "test", "repair-1", "repair-2"}
    feedback = {(r["task_id"], r["round"]): r for r in recs if r["type"] == "feedback"}
    assert set(feedback) == {("add", 1), ("double", 1), ("sq", 1), ("double", 2), ("sq", 2)}
    assert feedback[("sq", 1)]["failures"][0]["verdict"] == "wrong answer"
    assert feedback[("double", 2)]["pick"] == [0, 0]  # the tie in round 1 kept the pick

    metrics = json.loads((tmp_path / eval_report.METRICS_FILE).read_text())
    assert metrics["toy"]["refine"]["accuracy"] == pytest.approx(ACCURACY)
    table = (tmp_path / eval_report.TABLE_FILE).read_text()
    assert "| 0 (BoN pick) | 50.0 |" in table and "| 2 | 75.0 (2 requests) |" in table
    assert (tmp_path / eval_report.REFINE_PLOT_FILE).stat().st_size > 1000
    scalars = ev.summary_scalars(metrics)
    assert scalars["eval/toy/refine_accuracy_1"] == pytest.approx(0.75)


def test_rounds_extend_a_finished_run_and_resume_redoes_nothing(tmp_path):
    with FakeOpenAI(answer) as srv:
        _run(srv, tmp_path, rounds=0)
        assert not _repair_requests(srv)
        before = len(srv.ok_requests)
        one = _run(srv, tmp_path, rounds=1)["toy"]["refine"]
        assert len(srv.ok_requests) - before == 2 * REQUESTS_BY_ROUND[0]  # no code/test redrawn
        assert json.loads((tmp_path / "run.json").read_text())["refine"]["k"] == 2
        two = _run(srv, tmp_path, rounds=2)["toy"]["refine"]
        assert len(srv.ok_requests) - before == 2 * sum(REQUESTS_BY_ROUND)
        again = _run(srv, tmp_path, rounds=2)["toy"]["refine"]
        assert len(srv.ok_requests) - before == 2 * sum(REQUESTS_BY_ROUND)
    assert one["accuracy"] == pytest.approx(ACCURACY[:2])
    assert two == again and two["accuracy"] == pytest.approx(ACCURACY)


def test_an_interrupted_round_resumes(tmp_path):
    # the server dies after the codes, tests and 5 repair candidates: what finished stays
    with FakeOpenAI(answer, fail_after=(8 + 8 + 5, 401)) as srv, \
            pytest.raises(Exception, match="401"):
        _run(srv, tmp_path, rounds=2)
    with FakeOpenAI(answer) as srv:
        got = _run(srv, tmp_path, rounds=2)["toy"]["refine"]
        assert len(_repair_requests(srv)) == 2 * sum(REQUESTS_BY_ROUND) - 5
    assert got["accuracy"] == pytest.approx(ACCURACY)


def test_other_refine_settings_on_a_refined_run_are_refused(tmp_path):
    with FakeOpenAI(answer) as srv:
        _run(srv, tmp_path, rounds=1)
        with pytest.raises(EvalError, match="refine"):
            _run(srv, tmp_path, rounds=1, failing_tests=2)


def test_settings_validation_names_the_field():
    with pytest.raises(ValueError, match="refine.k"):
        RefineSettings(rounds=1, k=0)
    with pytest.raises(ValueError, match="refine.rounds"):
        RefineSettings(rounds=-1)


FAILURE = {"input": "1 3", "expected": "4", "output": "", "error": "ZeroDivisionError: x",
           "verdict": "runtime error"}


@pytest.mark.parametrize("mode", ["raw", "reference"])
def test_repair_prompts_show_the_program_and_the_failure(mode):
    b = PromptBuilder(PromptConfig(mode=mode))
    text = b.repair_prompt(PROBLEMS[0], "print(1 // 0)\n", [FAILURE])
    for part in ("TASK=add", "print(1 // 0)", "1 3", "ZeroDivisionError: x", "runtime error"):
        assert part in text, part
    if mode == "reference":
        assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>Assistant: ")
    else:
        assert text.rstrip().endswith("Assistant:")


def test_a_users_repair_template_is_used(tmp_path):
    tpl = tmp_path / "mine.jinja"
    tpl.write_text("FIX {{ code }} ON {% for f in failures %}{{ f.input }}{% endfor %}")
    b = PromptBuilder(PromptConfig(mode="raw", repair_template=str(tpl)))
    assert "FIX print(2) ON 1 3" in b.repair_prompt(PROBLEMS[0], "print(2)\n", [FAILURE])


class ScriptedCoder:
    """A local engine (engines interface, the vllm/hf path) writing the scripted codes and
    repairs: prompt i of a call is seeded ``seed + i``, where the seed holds the round
    (``ROUND_SEED_STRIDE``) and the first sample index (``100_003`` per index)."""

    tokenizer = None  # the raw prompt template

    def __init__(self):
        self.prompts: list[str] = []
        self.closed = False

    def generate(self, prompts, n, sampling):
        from rollout.engines.base import Sample

        out = []
        for i, prompt in enumerate(prompts):
            self.prompts.append(prompt)
            round_, rest = divmod(sampling.seed + i, ROUND_SEED_STRIDE)
            first = rest // 100_003
            task = re.search(r"TASK=(\w+)", prompt).group(1)
            table = REPAIRS[(task, round_)] if "Fix the Python program" in prompt else CODES[task]
            out.append([Sample([1], _fence(table[first + s]), None, "stop") for s in range(n)])
        return out

    def close(self):
        self.closed = True


def test_a_local_coder_repairs_with_a_separate_api_tester(tmp_path):
    coder = ScriptedCoder()
    (tmp_path / "coder").mkdir()
    with FakeOpenAI(answer) as srv:
        tester = ModelSpec(engine="api", api=ApiConfig(base_url=srv.base_url, model="tester",
                                                       key="sk-test"))
        got = ev.evaluate({"toy": PROBLEMS}, ModelSpec(engine="hf", model=str(tmp_path / "coder")),
                          tmp_path / "out", tester=tester,
                          settings=EvalSettings(k_code=2, k_case=2, bon=((2, 2),)),
                          refine=RefineSettings(rounds=2, k=2), sandbox_factory=_sandbox,
                          engine_factory=lambda spec: coder, progress=False)["toy"]
        assert all("**Test Input:**" in r.body["messages"][-1]["content"] for r in srv.ok_requests)
    assert got["refine"]["accuracy"] == pytest.approx(ACCURACY)
    repairs = [p for p in coder.prompts if "Fix the Python program" in p]
    assert len(repairs) == sum(REQUESTS_BY_ROUND)  # one prompt per request, n = k samples
    assert repairs[0].startswith("User: ") and not any(str(SECRET) in p for p in coder.prompts)
    assert coder.closed
