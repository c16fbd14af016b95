"""rollout.experience_maker: CURE experience rows from problems, with the real sandbox and rewards.

Two engines: a tiny random Qwen2 (transformers backend) for the token/log-prob bookkeeping of
real samples, and a scripted engine whose responses are known programs and tests, so the
execution matrix is non-trivial (a random model never writes a parsable program) and the
rewards can be checked against rollout.rewards and by hand.
"""
from __future__ import annotations

import numpy as np
import pytest

from rollout.contract.schema import FIELDS, check_rows
from rollout.engines.base import SamplingConfig
from rollout.experience_maker import (
    LENGTH_MULTIPLE,
    EvalConfig,
    ExperienceMaker,
    RolloutConfig,
    heldout_sampling,
    step_seed,
    train_sampling,
)
from rollout.problems import embedded_problems
from rollout.prompts import STOP_STRINGS, PromptBuilder, PromptConfig
from rollout.rewards import RewardConfig, batch_rewards
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

TINY_HF = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 512,
           "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
           "hidden_act": "silu", "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": False, "max_position_embeddings": 1024}


def _sum_problem():
    (p,) = [q for q in embedded_problems("train") if q.task_id == "embedded/sum_of_list"]
    return p


sandbox = sandbox_fixture()


def test_scripted_matrix_rewards_and_rows(sandbox):
    problem = _sum_problem()
    eng = ScriptedEngine([CORRECT, OFF_BY_ONE, NO_CODE], [GOOD, BAD, NO_TEST])
    cfg = RolloutConfig(k_code=3, k_case=3, max_gt_tests=4, max_tokens=64, seed=7)
    maker = ExperienceMaker(eng, sandbox, cfg, RewardConfig(scaling="fraction"),
                            PromptBuilder(PromptConfig(mode="raw")))
    arrays, stats, ex = maker.make([problem, problem], [11, 4], step=3, version=9)

    # The execution matrix: the correct code passes the correct test and every GT test; the
    # off-by-one code passes only the wrong test; unparsed rows/columns never pass.
    want_gen = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
    for i in range(2):
        np.testing.assert_array_equal(ex.gen_passed[i], want_gen)
        np.testing.assert_array_equal(ex.gt_passed[i], np.array([[1] * 4, [0] * 4, [0] * 4], bool))
    assert stats["verdicts"] == {"OK": 2 * (1 + 1 + 4), "WRONG_ANSWER": 2 * (1 + 1 + 4)}

    # Rewards equal rollout.rewards on the executed matrix, and the hand-computed values.
    br = batch_rewards(ex.gen_passed, ex.gt_passed, RewardConfig(scaling="fraction"),
                       code_parsed=[ex.code_parsed(i) for i in range(2)],
                       test_parsed=[ex.test_parsed(i) for i in range(2)])
    N = 2 * (3 + 3)
    assert set(arrays) == set(FIELDS)
    for k, dt in FIELDS.items():
        assert arrays[k].dtype == np.dtype(dt) and arrays[k].shape[0] == N, k
    assert check_rows(arrays) == N
    kinds = np.array([0, 0, 0, 1, 1, 1] * 2)
    np.testing.assert_array_equal(arrays["kind"], kinds)
    np.testing.assert_array_equal(arrays["problem_id"], [11] * 6 + [4] * 6)
    np.testing.assert_array_equal(arrays["policy_version"], np.full(N, 9))
    np.testing.assert_allclose(arrays["reward"][kinds == 0], br.code_raw)
    np.testing.assert_allclose(arrays["reward"][kinds == 1], br.test_raw)
    np.testing.assert_allclose(arrays["advantage"][kinds == 0], br.code_advantage)
    np.testing.assert_allclose(arrays["advantage"][kinds == 1], br.test_advantage)
    np.testing.assert_allclose(arrays["reward"][:6], [1, 0, 0, 1, -1, -1])
    z = np.array([2, -1, -1]) / np.sqrt(2)  # z-score of (1, 0, 0), population std
    np.testing.assert_allclose(arrays["advantage"][:3], z, rtol=1e-6)
    np.testing.assert_allclose(arrays["advantage"][3:6], z, rtol=1e-6)  # (1, -1, -1)
    assert arrays["has_signal"].all()
    assert stats["code_accuracy"] == pytest.approx(1 / 3)
    assert stats["unit_test_accuracy"] == pytest.approx(1 / 3)
    assert stats["code_parse_rate"] == pytest.approx(2 / 3)
    assert stats["p_00"] == pytest.approx(1.0)  # the wrong code passes the wrong test

    # Rows: prompt then response, right-padded; log-probs only on the response.
    L = arrays["tokens"].shape[1]
    assert L % LENGTH_MULTIPLE == 0
    for r in range(N):
        p, q = int(arrays["prompt_len"][r]), int(arrays["response_len"][r])
        s = (ex.codes if kinds[r] == 0 else ex.tests)[r // 6][r % 6 % 3]
        np.testing.assert_array_equal(arrays["tokens"][r, :p], s.prompt_token_ids)
        np.testing.assert_array_equal(arrays["tokens"][r, p:p + q], s.token_ids)
        assert not arrays["tokens"][r, p + q:].any()
        np.testing.assert_array_equal(arrays["rollout_logprobs"][r, p:p + q], -0.5)
        assert not arrays["rollout_logprobs"][r, :p].any()
        assert not arrays["rollout_logprobs"][r, p + q:].any()

    # Sampling settings and per-step seeds reach the engine.
    (n1, k1, s1), (n2, k2, s2) = eng.calls
    assert (n1, k1, n2, k2) == (2, 3, 2, 3)
    assert s1.seed == step_seed(7, 3, 0) and s2.seed == step_seed(7, 3, 1) != s1.seed
    assert s1.temperature == 1.0 and s1.logprobs and s1.max_tokens == 64


def test_zero_signal_groups_are_marked_and_rows_truncated(sandbox):
    problem = _sum_problem()
    eng = ScriptedEngine([OFF_BY_ONE, OFF_BY_ONE], [GOOD, NO_TEST])
    prompt_len = len(PromptBuilder(PromptConfig(mode="raw")).code_prompt(problem).encode())
    cfg = RolloutConfig(k_code=2, k_case=2, max_len=prompt_len + 10)
    maker = ExperienceMaker(eng, sandbox, cfg, RewardConfig(),
                            PromptBuilder(PromptConfig(mode="raw")))
    arrays, stats, _ = maker.make([problem], [0], step=0, version=1)
    # No code is correct: both groups carry no signal; rows are kept, marked, advantage 0.
    assert not arrays["has_signal"].any()
    assert not arrays["advantage"].any()
    assert stats["rows_with_signal"] == 0 and stats["problems_without_correct_code"] == 1
    # Truncation for training: prompt + response never exceeds max_len.
    total = arrays["prompt_len"] + arrays["response_len"]
    assert total.max() <= cfg.max_len
    assert arrays["response_len"][0] == 10


def test_configs_reject_bad_fields():
    with pytest.raises(ValueError, match=r"rollout\.k_cod: unknown field"):
        RolloutConfig.from_mapping({"k_cod": 3})
    with pytest.raises(ValueError, match=r"rollout\.temperature"):
        RolloutConfig(temperature=0)
    with pytest.raises(ValueError, match=r"eval\.bon"):
        EvalConfig(k_code=2, bon=((4, 1),))
    with pytest.raises(ValueError, match=r"eval\.topk: unknown field"):
        EvalConfig.from_mapping({"topk": 3})
    with pytest.raises(ValueError, match=r"eval\.top_k: must be >= 0"):
        EvalConfig(top_k=-1)
    assert heldout_sampling(EvalConfig(temperature=0), None).greedy  # evaluation may decode greedily


@pytest.mark.slow
def test_tiny_model_rows_match_its_samples(tmp_path, sandbox):
    """A real tiny Qwen2 (hf backend): rows hold exactly its prompt ids, sampled ids and their
    log-probs; evaluation metrics come out of the same core."""
    from rollout.engines import make_engine
    from rollout.random_policy import ensure_random_policy_dir

    d = ensure_random_policy_dir(tmp_path / "tiny", TINY_HF, seed=0)
    eng = make_engine({"backend": "hf", "model": str(d), "dtype": "float32", "device": "cpu"})
    problems = embedded_problems("train")[:2]
    cfg = RolloutConfig(k_code=2, k_case=2, max_tokens=12, seed=1)
    maker = ExperienceMaker(eng, sandbox, cfg)
    arrays, stats, ex = maker.make(problems, [5, 6], step=0, version=0)
    tok = eng.tokenizer
    assert arrays["tokens"].shape[0] == 8
    for r in range(8):
        i, j = divmod(r, 4)
        kind = 0 if j < 2 else 1
        s = (ex.codes if kind == 0 else ex.tests)[i][j % 2]
        prompt = (maker.builder.code_prompt(problems[i]) if kind == 0
                  else maker.builder.test_prompt(problems[i]))
        ids = tok(prompt)["input_ids"]
        p, q = int(arrays["prompt_len"][r]), int(arrays["response_len"][r])
        assert p == len(ids) and q == len(s.token_ids) <= 12
        np.testing.assert_array_equal(arrays["tokens"][r, :p], ids)
        np.testing.assert_array_equal(arrays["tokens"][r, p:p + q], s.token_ids)
        np.testing.assert_allclose(arrays["rollout_logprobs"][r, p:p + q], s.logprobs)
        assert (arrays["rollout_logprobs"][r, p:p + q] <= 0).all()
    assert stats["rows"] == 8 and stats["code_len_max"] <= 12
    ev = maker.evaluate(problems[:1], EvalConfig(k_code=2, k_case=2, max_tokens=8, seed=3,
                                                 bon=((1, 2), (2, 2))))
    assert ev["problems"] == 1 and set(ev["bon"]) == {"1x2", "2x2"}
    assert ev["code_accuracy"] is not None
    eng.close()


def test_sampling_config_of_rollout_and_eval():
    s = train_sampling(RolloutConfig(temperature=0.7, top_p=0.9, top_k=5, max_tokens=33), 4)
    assert isinstance(s, SamplingConfig)
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.seed, s.logprobs) == (0.7, 0.9, 5, 33, 4, True)
    assert s.stop == STOP_STRINGS
    assert step_seed(-1, 3, 0) is None
    e = heldout_sampling(EvalConfig(), None)
    assert (e.temperature, e.top_p, e.top_k, e.logprobs) == (0.8, 0.95, 40, False)
    assert e.stop == STOP_STRINGS
