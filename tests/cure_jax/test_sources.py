"""The experience sources of the trainer loop: what they hand the loop, and the rollout-server
source's pure parts (problem order, TensorBoard tags). The server itself runs in tests/e2e/."""
from __future__ import annotations

import jax
import numpy as np

from cure_jax import sharding
from cure_jax.config import LearnerConfig, SyntheticRolloutConfig
from cure_jax.learner import make_learner
from cure_jax.models.qwen import QwenConfig
from cure_jax.sources.synthetic import SyntheticSource

MODEL = QwenConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
                   attention_impl="xla")


def test_synthetic_source_hands_the_loop_a_batch_and_its_summaries():
    mesh = sharding.make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    learner = make_learner(MODEL, LearnerConfig(kl_coef=0.0, logprob_chunk=16), mesh, seed=0)
    params = learner.init_state().params
    src = SyntheticSource(SyntheticRolloutConfig(num_prompts=2, group_size=3, target_token=3),
                          learner, seed=5)
    src.start(params, 0, 0)
    exp = src.next(4, params, 9)
    assert exp.batch is not None and exp.rows == exp.batch.num_rows == 6 and exp.version == 9
    np.testing.assert_array_equal(exp.batch.tokens, src.sample(params, 4).tokens)  # seeded by step
    assert exp.scalars["reward/mean"] == float(exp.batch.reward.mean())
    assert {"reward/max", "advantage/abs_mean", "time/sample_s"} <= set(exp.scalars)
    assert exp.texts["samples/responses"].startswith("prompt [")
    assert src.publish(params, 10, 4, True) == {} and src.evaluate() is None
    assert src.checkpoint_meta() == {"source": "synthetic"}


def test_problem_ids_cover_each_epoch_and_are_a_function_of_the_step():
    from cure_jax.sources.rollout_server import problem_ids_for_step

    n, per = 10, 4
    ids = [problem_ids_for_step(n, per, s, seed=3) for s in range(5)]  # 20 ids = 2 epochs
    flat = [i for step in ids for i in step]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != list(range(10))  # shuffled
    assert problem_ids_for_step(n, per, 3, seed=3) == ids[3]  # resume picks the same
    assert problem_ids_for_step(n, per, 3, seed=4) != ids[3]
    assert problem_ids_for_step(3, 5, 0, seed=0)[:3] != []  # more per step than problems


def test_step_statistics_become_tensorboard_tags():
    from cure_jax.sources.rollout_server import rollout_scalars

    tags = rollout_scalars({"code_accuracy": 0.25, "unit_test_accuracy": None,
                          "code_reward_mean": 0.5, "test_advantage_std": 1.0,
                          "verdicts": {"OK": 3, "TIME_LIMIT": 1}, "generate_s": 2.0})
    assert tags == {"cure/code_accuracy": 0.25, "reward/code_mean": 0.5,
                    "advantage/test_std": 1.0, "sandbox/verdict_OK": 3.0,
                    "sandbox/verdict_TIME_LIMIT": 1.0, "time/generate_s": 2.0}


def test_server_threads_sleep_when_idle_unless_the_user_says_otherwise():
    from cure_jax.config import load_config
    from cure_jax.sources.rollout_server import server_env
    from tests.helpers.cure_runs import tiny_config

    cfg = load_config(tiny_config("random"))
    assert server_env(cfg, {"PATH": "/bin"}) == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    assert server_env(cfg, {"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
