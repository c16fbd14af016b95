"""The evaluation pipeline end to end against a scripted OpenAI-compatible server on loopback,
with the real sandbox: metrics equal hand-computed values, results survive an interruption and
a resume redoes nothing that finished, outputs (metrics.json, table, PNG) are written."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rollout import eval_report
from rollout import evaluate as ev
from rollout.engines.api_engine import ApiConfig, ApiFatalError
from rollout.eval_models import ModelSpec
from rollout.eval_settings import EvalError, EvalSettings, eval_sampling
from rollout.problems import Problem
from sandbox import Limits, Sandbox
from tests.helpers.fake_openai import FakeOpenAI

SANDBOX_ISOLATION = "auto"

# --- three problems with scripted answers (hand-worked metrics below) -------------------
PROBLEMS = [
    Problem(task_id="add", question="TASK=add. Read two integers a b; print a+b.",
            test_input=("1 2\n", "5 7\n"), test_output=("3\n", "12\n"),
            example_input=("9 9\n",), example_output=("18\n",)),
    Problem(task_id="double", question="TASK=double. Read n; print 2*n.",
            test_input=("3\n", "0\n"), test_output=("6\n", "0\n")),
    Problem(task_id="neg", question="TASK=neg. Read n; print -n.",
            test_input=("4\n", "0\n"), test_output=("-4\n", "0\n")),
]


def _fence(code: str) -> str:
    return f"Let me think.\n```python\n{code}\n```\n"


def _test(inp: str, out: str) -> str:
    return f"Reasoning...\n**Test Input:**\n```\n{inp}\n```\n**Test Output:**\n```\n{out}\n```\n**Explanation:**\nok"


CODES = {
    "add": [_fence("a, b = map(int, input().split())\nprint(a + b)"),
            _fence("a, b = map(int, input().split())\nprint(a - b)"),
            "I cannot solve this.",
            _fence("print(sum(map(int, input().split())))")],
    "double": [_fence("n = int(input())\nprint(n * n)"),
               _fence("n = int(input())\nprint(n + n + 1)"),
               _fence("print(2 * int(input()))"),
               _fence("n = int(input())\nprint(n * n)")],
    "neg": [_fence("input()\nprint(0)"), "no code", _fence("print(0)"), _fence("print(0)")],
}
TESTS = {
    "add": [_test("2 2", "4"), _test("1 1", "3"), "no test here", _test("3 0", "3")],
    "double": [_test("2", "4"), _test("5", "11"), _test("1", "2"), _test("3", "6")],
    "neg": [_test("4", "-4"), _test("0", "0"), _test("1", "-1"), "**Test Input:** nothing"],
}
# Hand-worked (see the matrices in the comments of test_metrics_equal_hand_computed_values).
EXPECTED = {
    "n_problems": 3,
    "code_accuracy": 3 / 12,
    "unit_test_accuracy": 5 / 8,
    "p_01": 3 / 11,
    "p_00": 1 / 4,
    "code_parse_rate": 10 / 12,
    "test_parse_rate": 10 / 12,
    "bon": {"1x1": 1 / 3, "2x1": 1 / 3, "4x0": 1 / 3, "2x4": 1 / 3, "3x4": 2 / 3, "4x2": 1 / 3,
            "4x4": 2 / 3},
}
BON = tuple((int(k.split("x")[0]), int(k.split("x")[1])) for k in EXPECTED["bon"])


def answer(body: dict) -> str:
    content = body["messages"][-1]["content"]
    task = re.search(r"TASK=(\w+)", content).group(1)
    index = body["seed"]  # sample i is sent with seed = sampling.seed (0) + i
    table = TESTS if "**Test Input:**" in content else CODES
    return table[task][index]


def _settings(**kw) -> EvalSettings:
    return EvalSettings(**({"k_code": 4, "k_case": 4, "bon": BON} | kw))


def _sandbox():
    return Sandbox(workers=2, limits=Limits(time_s=2.0), isolation=SANDBOX_ISOLATION)


def _run(srv: FakeOpenAI, out, **kw):
    spec = ModelSpec(engine="api", api=ApiConfig(
        base_url=srv.base_url, model="scripted", key="sk-never-write-me", max_concurrency=4,
        backoff_base_s=0.01, backoff_max_s=0.02, max_retries=kw.pop("max_retries", 3)))
    return ev.evaluate({"toy": PROBLEMS}, spec, out, settings=kw.pop("settings", _settings()),
                       sandbox_factory=_sandbox, progress=False, **kw)


def _close(a: dict, b: dict) -> None:
    for k, v in b.items():
        if isinstance(v, dict):
            _close(a[k], v)
        else:
            assert a[k] == pytest.approx(v), k


def test_metrics_equal_hand_computed_values(tmp_path):
    # add:    gen (codes x tests) [[1,0,-,1],[0,0,-,1],[-,-,-,-],[1,0,-,1]]; correct {0, 3}
    # double: gen [[1,0,0,0],[0,1,0,0],[1,0,1,1],[1,0,0,0]]; correct {2}
    # neg:    no correct code; codes 0, 2, 3 print 0 and pass only the "0" test
    with FakeOpenAI(answer, faults=[429, 500]) as srv:
        got = _run(srv, tmp_path)
    _close(got["toy"], EXPECTED)
    assert set(got) == {"toy"}
    # what the server saw: one chat request per sample, no test example (evaluation default)
    bodies = [r.body for r in srv.ok_requests]
    assert len(bodies) == 3 * (4 + 4)
    assert all(set(m) == {"role", "content"} for b in bodies for m in b["messages"])
    assert not any("9 9" in b["messages"][-1]["content"] for b in bodies)
    assert all(b["temperature"] == 0.8 and b["top_p"] == 0.95 for b in bodies)

    # every sample and every execution is on disk; the key is nowhere in the outputs
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert sum(r["type"] == "sample" for r in recs) == 24
    execs = {r["task_id"]: r for r in recs if r["type"] == "exec"}
    assert execs["add"]["gen"] == ["01-0", "11-0", "----", "01-0"]  # digits: sandbox.Verdict
    gen = {t: np.array([[c == "0" for c in row] for row in r["gen"]]) for t, r in execs.items()}
    np.testing.assert_array_equal(gen["double"], [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(gen["add"], [[1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 1]])
    for f in tmp_path.iterdir():
        assert "sk-never-write-me" not in f.read_bytes().decode("latin-1"), f

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    _close(metrics["toy"], EXPECTED)
    table = (tmp_path / "results.md").read_text()
    assert "| toy | 3 | 62.5 | 25.0 |" in table and "BoN 4x4" in table
    assert "| scripted | 62.5/25.0/66.7 |" in table


def test_resume_after_interruption_redoes_nothing(tmp_path):
    with FakeOpenAI(answer) as srv:
        full = _run(srv, tmp_path / "ref")
    # Interrupted run: the server starts refusing (401) after 10 answers.
    with FakeOpenAI(answer, fail_after=(10, 401)) as srv, \
            pytest.raises(ApiFatalError, match="HTTP 401"):
        _run(srv, tmp_path / "run")
    done = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert 0 < len(done) <= 10 and all(r["type"] == "sample" for r in done)
    assert not (tmp_path / "run" / "metrics.json").exists()
    # A crash mid-write leaves half a line: it is dropped and redone.
    with open(tmp_path / "run" / "samples.jsonl", "a") as fh:
        fh.write('{"type": "sample", "dataset": "to')
    with FakeOpenAI(answer) as srv:
        resumed = _run(srv, tmp_path / "run")
    assert len(srv.log) == 24 - len(done)
    seen = {(r["task_id"], r["kind"], r["index"]) for r in done}
    for r in srv.log:  # nothing finished is asked for again
        content = r.body["messages"][-1]["content"]
        kind = "test" if "**Test Input:**" in content else "code"
        assert (re.search(r"TASK=(\w+)", content).group(1), kind, r.body["seed"]) not in seen
    assert resumed == full
    # A third run finds everything done: no requests, no executions, same metrics.
    n_lines = len((tmp_path / "run" / "samples.jsonl").read_text().splitlines())
    with FakeOpenAI(answer) as srv:
        again = _run(srv, tmp_path / "run")
    assert len(srv.log) == 0 and again == full
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == n_lines


def test_raising_k_draws_only_the_extra_samples(tmp_path):
    with FakeOpenAI(answer) as srv:
        _run(srv, tmp_path, settings=_settings(k_code=2, k_case=2, bon=((2, 2),)))
        assert len(srv.log) == 3 * 4
        got = _run(srv, tmp_path)
        assert len(srv.log) == 3 * 8
    _close(got["toy"], EXPECTED)


def test_resume_with_other_settings_is_refused(tmp_path):
    with FakeOpenAI(answer) as srv:
        _run(srv, tmp_path)
        with pytest.raises(EvalError, match=r"sampling differ"):
            _run(srv, tmp_path, sampling=eval_sampling(temperature=0.2))


def test_single_eval_samples_code_only(tmp_path):
    with FakeOpenAI(answer) as srv:
        got = _run(srv, tmp_path, settings=_settings(single_eval=True, k_case=0, bon=((1, 0), (4, 0))))
    assert len(srv.log) == 12
    r = got["toy"]
    assert r["code_accuracy"] == pytest.approx(3 / 12) and r["unit_test_accuracy"] is None
    assert r["bon"] == {"1x0": pytest.approx(1 / 3), "4x0": pytest.approx(1 / 3)}


def test_separate_tester_model(tmp_path):
    with FakeOpenAI(answer) as coder_srv, FakeOpenAI(answer) as tester_srv:
        def spec(srv, name):
            return ModelSpec(engine="api", api=ApiConfig(base_url=srv.base_url, model=name))
        got = ev.evaluate({"toy": PROBLEMS}, spec(coder_srv, "coder-m"), tmp_path,
                          tester=spec(tester_srv, "tester-m"), settings=_settings(),
                          sandbox_factory=_sandbox, progress=False)
    assert {r.body["model"] for r in coder_srv.log} == {"coder-m"} and len(coder_srv.log) == 12
    assert {r.body["model"] for r in tester_srv.log} == {"tester-m"} and len(tester_srv.log) == 12
    _close(got["toy"], EXPECTED)
    assert "coder-m + tester-m (tester)" in (tmp_path / "results.md").read_text()


def test_plot_has_the_documented_size(tmp_path):
    from PIL import Image

    metrics = {"a": dict(EXPECTED), "b": dict(EXPECTED)}
    size = eval_report.plot_bon(metrics, BON, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.size == size == (2 * 2 * 500, 400)


def test_settings_validation_names_the_field():
    with pytest.raises(ValueError, match=r"^bon: \(8, 4\) needs 1 <= n <= k_code = 4"):
        _settings(bon=((8, 4),))
    with pytest.raises(ValueError, match=r"^bon: .*single_eval samples no tests"):
        _settings(single_eval=True, k_case=0, bon=((1, 1),))
    with pytest.raises(ValueError, match=r"^sampling\.top_p"):
        eval_sampling(top_p=0)


def test_summary_scalars_for_tensorboard():
    got = ev.summary_scalars({"toy": dict(EXPECTED, unit_test_accuracy=None)}, prefix="eval")
    assert got["eval/toy/code_accuracy"] == pytest.approx(0.25)
    assert got["eval/toy/bon_4x4"] == pytest.approx(2 / 3)
    assert "eval/toy/unit_test_accuracy" not in got and got["eval/toy/n_problems"] == 3.0


def test_the_evaluation_modules_import_neither_jax_nor_torch():
    import subprocess
    import sys

    code = ("import sys, rollout.evaluate, rollout.eval_main, rollout.engines.api_engine, "
            "rollout.eval_models, rollout.eval_log, rollout.eval_settings, rollout.datasets, "
            "rollout.execution, rollout.engines.data_parallel; "
            "bad = [m for m in ('jax', 'flax', 'torch', 'vllm', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def _matrix_problem(task: str, gen: np.ndarray, gt: np.ndarray, code_ok, test_ok):
    """A problem plus scripted replies whose execution matrix is exactly (gen, gt): code j
    looks its stdin up in a table and prints 1 where the matrix says "passes", else 0."""
    n, m = gen.shape
    problem = Problem(task_id=task, question=f"TASK={task}. Lookup.",
                      test_input=tuple(f"t{l}\n" for l in range(gt.shape[1])),
                      test_output=("1\n",) * gt.shape[1])
    codes, tests = [], []
    for j in range(n):
        table = {f"g{k}": int(gen[j, k]) for k in range(m)}
        table.update({f"t{l}": int(gt[j, l]) for l in range(gt.shape[1])})
        codes.append(_fence(f"print({table!r}[input().strip()])") if code_ok[j] else "no code")
    for k in range(m):
        tests.append(_test(f"g{k}", "1") if test_ok[k] else "**Test Output:** 1")
    return problem, codes, tests


def test_pipeline_metrics_equal_the_cure_definitions_on_the_core_tables(tmp_path):
    """The CURE core's hand-worked tables (tests/rollout/test_metrics.py) and random tables, realised
    as programs and tests, run through samples -> sandbox -> records -> metrics: the result
    equals rollout.metrics on the tables themselves."""
    from rollout import metrics
    from tests.rollout.test_metrics import GEN, GT

    rng = np.random.default_rng(0)
    cases = [("core", GEN, GT, [1, 1, 1, 1], [1] * 5),
             ("core_unparsed", GEN, GT, [1, 1, 1, 0], [1, 0, 1, 1, 1])]
    for i in range(2):
        gen = rng.random((4, 5)) < 0.5
        gt = rng.random((4, 3)) < 0.7
        cases.append((f"rand{i}", gen, gt, rng.random(4) < 0.85, rng.random(5) < 0.85))
    problems, script = [], {}
    for task, gen, gt, cok, tok in cases:
        p, codes, tests = _matrix_problem(task, np.asarray(gen), np.asarray(gt), cok, tok)
        problems.append(p)
        script[task] = (codes, tests)

    def reply(body):
        content = body["messages"][-1]["content"]
        task = re.search(r"TASK=(\w+)", content).group(1)
        return script[task][1 if "**Test Input:**" in content else 0][body["seed"]]

    bon = [(4, 5), (4, 0), (1, 5), (2, 3), (3, 1)]
    with FakeOpenAI(reply) as srv:
        spec = ModelSpec(engine="api", api=ApiConfig(base_url=srv.base_url, model="m",
                                                        max_concurrency=8))
        got = ev.evaluate({"tables": problems}, spec, tmp_path, sandbox_factory=_sandbox,
                          settings=EvalSettings(k_code=4, k_case=5, bon=tuple(bon)),
                          progress=False, reports=False)["tables"]
    want = metrics.aggregate(
        metrics.evaluate_table(np.asarray(gen), np.asarray(gt), bon, code_parsed=np.asarray(cok, bool),
                               test_parsed=np.asarray(tok, bool))
        for _, gen, gt, cok, tok in cases)
    assert got["n_problems"] == want["problems"] == len(cases)
    for key in ("code_accuracy", "unit_test_accuracy", "p_01", "p_00", "code_parse_rate",
                "test_parse_rate", "bon"):
        assert got[key] == pytest.approx(want[key]), key


class ScriptedLocalEngine:
    """A local engine (engines interface) answering from the scripted tables: the pipeline's
    vllm/hf path without a model. Sample s of a prompt is reply ``first + s``, where the call's
    seeds encode the first sample index (``seed + 100003 * first + i``)."""

    tokenizer = None  # no chat template: the raw prompt template is used
    weights_version = 0

    def __init__(self):
        self.calls = []
        self.closed = False

    def generate(self, prompts, n, sampling):
        from rollout.engines.base import Sample

        self.calls.append((list(prompts), n, sampling))
        out = []
        for i, prompt in enumerate(prompts):
            first = (sampling.seed + i) // 100_003
            task = re.search(r"TASK=(\w+)", prompt).group(1)
            table = TESTS if "**Test Input:**" in prompt else CODES
            out.append([Sample([1, 2], table[task][first + s], None, "stop") for s in range(n)])
        return out

    def load_weights(self, named_tensors):
        raise AssertionError("not used")

    def close(self):
        self.closed = True


def test_local_engine_path_with_a_lent_engine(tmp_path):
    eng = ScriptedLocalEngine()
    spec = ModelSpec(engine="vllm", model="policy-v7")
    kw = {"engine": eng, "sandbox_factory": _sandbox, "progress": False}
    ev.evaluate({"toy": PROBLEMS}, spec, tmp_path, settings=_settings(k_code=2, k_case=1, bon=((2, 1),)), **kw)
    got = ev.evaluate({"toy": PROBLEMS}, spec, tmp_path, settings=_settings(), **kw)  # k grows
    _close(got["toy"], EXPECTED)
    assert not eng.closed  # lent, so left running
    prompts, _n, sampling = eng.calls[0]
    assert prompts[0].startswith("User: ") and prompts[0].rstrip().endswith("Assistant:")
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.8, 0.95, 40)
    assert "User:" in sampling.stop and sampling.logprobs is False
    # first run: codes n=2, tests n=1; second run: the missing codes 2-3 and tests 1-3 only
    assert [(len(p), n) for p, n, _ in eng.calls] == [(3, 2), (3, 1), (3, 2), (3, 3)]
    recs = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "sample" for r in recs) == 24
