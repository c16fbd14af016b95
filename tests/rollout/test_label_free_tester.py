"""Label-free training as in the paper: a frozen external tester (``cure.tester``) writes the
tests that reward the policy's codes; problems without ground-truth tests load for label-free
training only, and evaluation of them is a one-line error.

Scripted engines (known programs and tests) check what rewards the codes and what the batch
holds; the rollout server (in this process, and as its own process) runs a tiny random policy
with the shipped tiny coder as the tester on the transformers backend.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
import pytest

from rollout.contract import sections  # not TesterConfig: pytest collects Test*
from rollout.contract.config import ConfigError
from rollout.contract.schema import KIND_CODE, check_rows
from rollout.contract.sections import TESTER_SEED_OFFSET, RewardConfig
from rollout.contract.stats import merge_rollout_stats
from rollout.datasets import spec_problems
from rollout.experience_maker import EvalConfig, ExperienceMaker, RolloutConfig
from rollout.problems import (
    Problem,
    ProblemFormatError,
    check_labeled,
    embedded_problems,
    load_problems,
)
from rollout.prompts import PromptBuilder, PromptConfig
from rollout.rewards import label_free_code_rewards
from tests.helpers.scripted_rollout import (
    BAD,
    CORRECT,
    GOOD,
    NO_CODE,
    NO_TEST,
    OFF_BY_ONE,
    ScriptedEngine,
    sandbox_fixture,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_CODER = ROOT / "rollout" / "assets" / "tiny_coder"
TINY_HF = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 512,
           "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
           "hidden_act": "silu", "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": False, "max_position_embeddings": 1024}

# another correct test (not helpers.GOOD2)
GOOD_5_5 = "**Test Input:**\n```\n2\n5 5\n```\n**Test Output:**\n```\n10\n```\n**Explanation:** sum"


def _sum_problem() -> Problem:
    (p,) = [q for q in embedded_problems("train") if q.task_id == "embedded/sum_of_list"]
    return p


def _unlabeled(p: Problem, task_id: str = "unlabeled/0") -> Problem:
    return Problem(task_id, p.question, (), (), p.example_input, p.example_output,
                   dataset="unlabeled")


def _scripted(codes=(), tests=()) -> ScriptedEngine:
    """A stand-in for a model: fixed responses per prompt kind (byte tokens, log-prob -0.5 when
    asked for); a kind it was given no responses for is an error, and so is a weight push."""
    return ScriptedEngine(codes, tests, exact_n=False, logprobs_when_asked=True)


sandbox = sandbox_fixture()


def _maker(sandbox, policy, tester=None, label_free=True) -> ExperienceMaker:
    cfg = RolloutConfig(k_code=3, k_case=3, max_gt_tests=4, max_tokens=64, seed=7)
    return ExperienceMaker(policy, sandbox, cfg, RewardConfig(label_free=label_free),
                           PromptBuilder(PromptConfig(mode="raw")), tester=tester)


# ------------------------------------------------------------------------------ the batch
def test_the_testers_tests_reward_the_codes_and_are_no_rows(sandbox):
    # The policy's own tests would reward the off-by-one code; it is never asked for tests.
    policy = _scripted(codes=[CORRECT, OFF_BY_ONE, NO_CODE])
    tester = _scripted(tests=[GOOD, GOOD_5_5, NO_TEST])
    maker = _maker(sandbox, policy, tester)
    arrays, stats, ex = maker.make([_sum_problem()] * 2, [5, 8], step=2, version=4)

    assert [c[0] for c in policy.requests] == ["code"] * 2
    assert all(c[2].logprobs for c in policy.requests)
    assert [c[0] for c in tester.requests] == ["test"] * 2
    assert not any(c[2].logprobs for c in tester.requests)  # the tester's log-probs are never used
    want = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]], bool)  # the tester's tests, not the policy's
    for i in range(2):
        assert [s.text for s in ex.tests[i]] == [GOOD, GOOD_5_5, NO_TEST]
        np.testing.assert_array_equal(ex.gen_passed[i], want)

    # Only code rows: the tester is frozen, its tests are not trained on.
    assert check_rows(arrays) == 6
    np.testing.assert_array_equal(arrays["kind"], np.full(6, KIND_CODE))
    np.testing.assert_array_equal(arrays["problem_id"], [5] * 3 + [8] * 3)
    raw, _ = label_free_code_rewards(want, ex.test_parsed(0), ex.code_parsed(0))
    np.testing.assert_allclose(arrays["reward"], np.tile(raw, 2))
    np.testing.assert_allclose(arrays["reward"][:3], [1, 0, 0])
    np.testing.assert_allclose(arrays["advantage"][:3], np.array([2, -1, -1]) / np.sqrt(2),
                               rtol=1e-6)
    assert stats["rows"] == stats["code_rows"] == 6 and stats["test_rows"] == 0
    assert stats["test_advantage_count"] == 0 and stats["test_len_mean"] == 0.0
    assert stats["problems_without_gt"] == 0
    assert stats["code_accuracy"] == pytest.approx(1 / 3)  # the ground truth, for the record
    assert stats["unit_test_accuracy"] == pytest.approx(2 / 3)  # the tester's tests
    merged = merge_rollout_stats([stats, stats])  # every statistic has a merge rule
    assert merged["rows"] == 12 and merged["problems_without_gt"] == 0


def test_the_policys_own_tests_stay_an_option(sandbox):
    policy = _scripted(codes=[CORRECT, OFF_BY_ONE, NO_CODE], tests=[BAD, BAD, NO_TEST])
    arrays, stats, _ = _maker(sandbox, policy).make([_sum_problem()], [0], step=0, version=0)
    assert arrays["kind"].tolist() == [0, 0, 0, 1, 1, 1] and stats["test_rows"] == 3
    np.testing.assert_allclose(arrays["reward"][:3], [0, 1, 0])  # the wrong tests' favourite


def test_a_tester_needs_label_free(sandbox):
    with pytest.raises(ValueError, match="label_free"):
        _maker(sandbox, _scripted(codes=[CORRECT]), _scripted(tests=[GOOD]), label_free=False)


def test_problems_without_ground_truth_in_label_free_training(sandbox):
    policy = _scripted(codes=[CORRECT, OFF_BY_ONE, NO_CODE])
    maker = _maker(sandbox, policy, _scripted(tests=[GOOD, GOOD_5_5, NO_TEST]))
    labeled, unlabeled = _sum_problem(), _unlabeled(_sum_problem())
    arrays, stats, ex = maker.make([labeled, unlabeled], [0, 1], step=0, version=0)
    assert ex.gt_passed[1].shape == (3, 0)  # executed against the tester's tests only
    np.testing.assert_allclose(arrays["reward"], [1, 0, 0] * 2)
    assert stats["problems_without_gt"] == 1
    assert stats["code_accuracy"] == pytest.approx(1 / 3)  # over the labeled problem only
    assert stats["counts"]["n_codes"] == 3

    arrays, stats, _ = maker.make([unlabeled], [1], step=1, version=0)
    assert check_rows(arrays) == 3 and stats["problems_without_gt"] == 1
    for k in ("code_accuracy", "unit_test_accuracy", "p_01", "p_00"):
        assert stats[k] is None, k  # they need ground truth
    assert merge_rollout_stats([stats, stats])["code_accuracy"] is None

    # Evaluation needs ground truth: one line naming the dataset and the problem.
    with pytest.raises(ProblemFormatError) as e:
        maker.evaluate([labeled, unlabeled], EvalConfig(k_code=3, k_case=3, bon=((1, 1),)))
    assert "'unlabeled/0' has no ground-truth tests" in str(e.value)
    assert "dataset 'unlabeled'" in str(e.value) and "\n" not in str(e.value)
    assert policy.requests[-1][0] == "code"  # nothing sampled for it


# ------------------------------------------------------------------------------ loading
def _write_unlabeled(path: pathlib.Path) -> pathlib.Path:
    q = _sum_problem()
    rows = [{"task_id": "u0", "question": q.question},  # no test fields at all
            {"task_id": "u1", "question": q.question, "test_input": [], "test_output": [],
             "example_input": list(q.example_input), "example_output": list(q.example_output)}]
    path.write_text(json.dumps(rows))
    return path


def test_problems_without_ground_truth_load_only_when_label_free(tmp_path):
    path = _write_unlabeled(tmp_path / "unlabeled.json")
    got = load_problems(path, require_tests=False)
    assert [p.task_id for p in got] == ["u0", "u1"] and not any(p.labeled for p in got)
    assert spec_problems(str(path), require_tests=False) == got
    for load in (lambda: load_problems(path), lambda: spec_problems(str(path))):
        with pytest.raises(ProblemFormatError) as e:
            load()
        msg = str(e.value)
        assert msg.startswith(f"{path}, row 0 (0-based index), field 'test_input': ")
        assert "problem 'u0' has no ground-truth tests" in msg and "\n" not in msg
    jsonl = tmp_path / "unlabeled.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in json.loads(path.read_text())))
    assert len(load_problems(jsonl, require_tests=False)) == 2
    with pytest.raises(ProblemFormatError, match=r"unlabeled\.jsonl, line 1, field 'test_input'"):
        load_problems(jsonl)
    # Half of the ground truth is still a malformed row.
    path.write_text(json.dumps([{"question": "q?", "test_input": ["1\n"]}]))
    with pytest.raises(ProblemFormatError, match="'test_output': missing"):
        load_problems(path, require_tests=False)
    check_labeled(embedded_problems("eval"))


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize("section,expected", [
    ({"tester": {"model_path": "/models/tester"}},
     (r"^config\.cure\.tester\.model_path: a frozen tester's tests reward the codes without "
      r"ground truth: it needs config\.cure\.label_free=True")),
    ({"label_free": True, "tester": {"model_path": "/m", "engine": "tgi"}},
     r"^config\.cure\.tester\.engine: must be one of \('', 'vllm', 'hf'\)"),
    ({"label_free": True, "tester": {"model_path": "/m", "engine_options": {"kv_cache_gb": 0}}},
     r"^config\.cure\.tester\.engine_options\.kv_cache_gb: must be >= 1"),
    ({"label_free": True, "tester": {"model": "/m"}},
     r"^config\.cure\.tester\.model: unknown field \(known: engine, engine_options, model_path\)"),
])
def test_config_errors_name_the_field(section, expected):
    with pytest.raises(ConfigError, match=expected) as e:
        RewardConfig.from_mapping(section, "config.cure")
    assert "\n" not in str(e.value)


def test_tester_engine_spec():
    t = sections.TesterConfig(model_path="/m/tester",
                              engine_options={"device": "cpu", "kv_cache_gb": 2})
    spec = t.engine_spec("vllm", seed=3)
    assert (spec["backend"], spec["model"], spec["seed"]) == ("vllm", "/m/tester",
                                                              3 + TESTER_SEED_OFFSET)
    assert spec["device"] == "cpu" and spec["kv_cache_gb"] == 2
    hf = sections.TesterConfig(model_path="/m", engine="hf")
    assert hf.engine_spec("vllm", 0)["backend"] == "hf"
    assert not RewardConfig().tester.model_path  # default: the policy writes its own tests


# ------------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> pathlib.Path:
    from rollout.random_policy import ensure_random_policy_dir

    return ensure_random_policy_dir(tmp_path_factory.mktemp("lf") / "policy", TINY_HF, seed=0)


class Endpoints:
    """Buffer and channel owned by the test (the driver's role)."""

    def __init__(self, weights: dict) -> None:
        from rollout.contract.ring_buffer import RolloutBuffer
        from rollout.contract.weight_channel import WeightChannel

        self.run_id = f"lftest{os.getpid()}x{time.monotonic_ns() % 10**6}"
        self.buffer = RolloutBuffer.create(self.run_id, 2, 8 << 20)
        self.buffer.open_reader()
        self.channel = WeightChannel.create(self.run_id,
                                            WeightChannel.required_capacity(weights))

    def close(self) -> None:
        self.buffer.close()
        self.channel.close()


def _spec(ep: Endpoints, policy_dir, train: str, eval_: str) -> dict:
    return {
        "buffer": ep.buffer.name, "channel": ep.channel.name,
        "engine": {"backend": "hf", "model": str(policy_dir), "dtype": "float32",
                   "device": "cpu", "seed": 1},
        "rollout": {"engine": "hf", "k_code": 2, "k_case": 2, "max_tokens": 8, "max_len": 1024,
                    "seed": 3},
        "cure": {"label_free": True,
                 "tester": {"model_path": str(TINY_CODER),
                            "engine_options": {"dtype": "float32", "device": "cpu"}}},
        "eval": {"k_code": 2, "k_case": 1, "max_tokens": 6, "bon": [[1, 1]]},
        "sandbox": {"workers": 1}, "data": {"train": train, "eval": eval_},
        "heartbeat_s": 0.2,
    }


class _Chan:
    def send(self, msg):
        pass


@pytest.mark.slow
def test_server_tester_engine_is_frozen_and_unlabeled_eval_fails(tmp_path, policy_dir):
    import torch
    from safetensors.numpy import load_file

    from rollout.server import Server

    weights = load_file(str(policy_dir / "model.safetensors"))
    unlabeled = _write_unlabeled(tmp_path / "unlabeled.json")
    ep = Endpoints(weights)
    server = None
    try:
        server = Server(_spec(ep, policy_dir, str(unlabeled), str(unlabeled)), _Chan())
        assert len(server.train) == 2  # loaded for label-free training
        assert server.tester.config.model == str(TINY_CODER)
        assert server.tester.config.seed == 1 + TESTER_SEED_OFFSET
        assert server.maker.tester is server.tester
        before = {k: v.clone() for k, v in server.tester.model.state_dict().items()}
        ep.channel.write({k: np.zeros_like(v) for k, v in weights.items()}, version=3)
        assert server.load_weights({"version": 3})["version"] == 3
        assert server.engine.weights_version == 3 and server.tester.weights_version == 0
        assert all(not p.any() for p in server.engine.model.parameters())  # pushed: zeros
        after = server.tester.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # the tester: untouched

        rep = server.rollout({"step": 0, "problem_ids": [0, 1]})
        assert rep["rows"] == 4
        b = ep.buffer.get(timeout=5)
        np.testing.assert_array_equal(b.arrays["kind"], np.full(4, KIND_CODE))
        assert b.meta["test_rows"] == 0 and b.meta["problems_without_gt"] == 2
        assert b.meta["code_accuracy"] is None

        with pytest.raises(ProblemFormatError) as e:
            server.evaluate({"split": "eval"})
        msg = str(e.value)
        assert str(unlabeled) in msg and "problem 'u0' has no ground-truth tests" in msg
        assert "\n" not in msg
    finally:
        if server is not None:
            server.close()
        ep.close()


@pytest.mark.slow
def test_rollout_server_process_with_a_frozen_tester(tmp_path, policy_dir):
    from safetensors.numpy import load_file

    from rollout.contract.control import RolloutClient

    weights = load_file(str(policy_dir / "model.safetensors"))
    ep = Endpoints(weights)
    try:
        client = RolloutClient(_spec(ep, policy_dir, "embedded:train", "embedded:eval"),
                               tmp_path, heartbeat_timeout_s=30)
        try:
            ep.channel.write(weights, version=2)
            assert client.call("load_weights", 60, version=2)["version"] == 2
            rep = client.call("rollout", 120, step=0, problem_ids=[4, 7])
            assert rep["version"] == 2 and rep["rows"] == 4  # k_code codes, no test rows
            b = ep.buffer.get(timeout=5)
            np.testing.assert_array_equal(b.arrays["kind"], np.full(4, KIND_CODE))
            np.testing.assert_array_equal(b.arrays["policy_version"], np.full(4, 2))
            assert b.meta["test_rows"] == 0 and b.meta["problems_without_gt"] == 0
            ev = client.call("evaluate", 120, split="eval", max_problems=1)["metrics"]
            assert ev["problems"] == 1  # the policy alone, on labeled problems
        finally:
            client.close()
        assert client.proc.returncode == 0
    finally:
        ep.close()
