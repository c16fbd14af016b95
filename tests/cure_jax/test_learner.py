"""Train step on the real Qwen model: sharded == unsharded, micro-batching exact, learning works."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from cure_jax import row_plan, sharding
from cure_jax.config import LearnerConfig, SyntheticRolloutConfig
from cure_jax.experience import ExperienceBatch, ExperienceError
from cure_jax.learner import make_learner
from cure_jax.models.qwen import QwenConfig
from cure_jax.sources.synthetic import SyntheticSource, group_advantages

MODEL = QwenConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
                   attention_impl="xla")


def random_batch(n: int = 16, length: int = 24, seed: int = 0, vocab: int = 64) -> ExperienceBatch:
    rng = np.random.default_rng(seed)
    prompt = rng.integers(2, 8, n).astype(np.int32)
    resp = rng.integers(1, length - 8, n).astype(np.int32)
    tokens = rng.integers(0, vocab, (n, length)).astype(np.int32)
    t = np.arange(length)[None]
    tokens[t >= (prompt + resp)[:, None]] = 0
    mask = (t >= prompt[:, None]) & (t < (prompt + resp)[:, None])
    roll = np.where(mask, -rng.exponential(4.0, (n, length)), 0.0).astype(np.float32)
    reward = rng.normal(size=n).astype(np.float32)
    return ExperienceBatch(tokens=tokens, prompt_len=prompt, response_len=resp, rollout_logprobs=roll,
                           advantage=group_advantages(reward, 4 if n % 4 == 0 else 1), kind=np.zeros(n, np.int8),
                           problem_id=np.arange(n, dtype=np.int32) // 4,
                           policy_version=np.zeros(n, np.int32), reward=reward)


def _run(mesh, cfg: LearnerConfig, batch: ExperienceBatch, steps: int = 1):
    learner = make_learner(MODEL, cfg, mesh, seed=0)
    state = learner.init_state()
    ref = learner.reference_params(state.params) if cfg.kl_coef > 0 else None
    metrics = None
    for _ in range(steps):
        state, metrics = learner.update(state, batch, ref)
    return jax.tree.map(np.asarray, jax.device_get(state.params)), metrics, learner


FULL = LearnerConfig(lr=1e-3, clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.1,
                     entropy_coef=0.01, tis_cap=2.0, agg_mode="seq-mean-token-mean",
                     ppo_epochs=2, minibatches=2, micro_batch_size=4, length_bucket=32,
                     logprob_chunk=8)


def _close(a, b, atol):
    for (pa, xa), (_, xb) in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                                 jax.tree_util.tree_flatten_with_path(b)[0]):
        np.testing.assert_allclose(xa, xb, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(pa))


@pytest.fixture(scope="module")
def unsharded_result():
    single = sharding.make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    p0, m0, _ = _run(single, FULL, random_batch())
    return p0, m0


@pytest.mark.slow
@pytest.mark.parametrize("axes,offload", [({"data": 1, "fsdp": 2, "tp": 4}, False),
                                          ({"data": 1, "fsdp": 8, "tp": 1}, True)])
def test_sharded_update_equals_unsharded(unsharded_result, axes, offload):
    """4 AdamW updates (2 epochs x 2 minibatches, 2 micro-batches each) on 8 devices."""
    p0, m0 = unsharded_result
    cfg = dataclasses.replace(FULL, offload_reference=offload)
    p1, m1, learner = _run(sharding.make_mesh(**axes), cfg, random_batch())
    _close(p1, p0, atol=1e-5)  # 1% of one update (lr 1e-3): summation order only
    for k in ("pg_loss", "kl", "entropy", "clip_frac", "grad_norm"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # PPO with real old log-probs: the second update of the batch sees a ratio != 1.
    assert m0["abs_log_ratio"] > 1e-5 and m0["kl"] > 0
    # parameters really are sharded on the big mesh
    w = learner.param_shardings["layers"]["mlp"]["gate_proj"]
    assert len(set(w.spec) - {None}) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batching_gradient_equals_one_batch(agg):
    """Micro-batches of 4 rows, each trimmed to its own length bucket, give the gradient of
    the whole 16-row batch (float32, tight tolerance), for every aggregation mode."""
    batch = random_batch(seed=1)
    single = sharding.make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    cfg = dataclasses.replace(FULL, agg_mode=agg, norm_constant=16.0, ppo_epochs=1, minibatches=1,
                              length_bucket=16, micro_batch_size=0)
    learner = make_learner(MODEL, cfg, single, seed=0)
    state = learner.init_state()
    ref = learner.reference_params(state.params)
    g_big, m_big = learner.gradients(state.params, batch, ref)
    learner.cfg = dataclasses.replace(cfg, micro_batch_size=4)
    g_acc, m_acc = learner.gradients(state.params, batch, ref)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g_big))
    assert scale > 0
    for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(g_acc)[0],
                                 jax.tree_util.tree_flatten_with_path(g_big)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale, err_msg=jax.tree_util.keystr(path))
    for k in ("pg_loss", "kl", "entropy"):
        np.testing.assert_allclose(m_acc[k], m_big[k], rtol=1e-5, atol=1e-7, err_msg=k)
    mbs = learner._plan(row_plan.gather_rows(batch), np.arange(16))
    assert len(mbs) == 4 and all(m.rows_per_process == 4 for m in mbs)
    lengths = {m.length for m in mbs}
    assert len(lengths) >= 2, lengths  # several length buckets really were exercised


def learn_synthetic(cfg: LearnerConfig, steps: int):
    """`steps` RL steps of the synthetic source (reward: token 3) on 2 devices; returns the
    final state and the mean reward of each step's batch."""
    mesh = sharding.make_mesh(data=1, fsdp=-1, tp=1, devices=jax.devices()[:2])
    learner = make_learner(MODEL, cfg, mesh, seed=0)
    state = learner.init_state()
    ref = learner.reference_params(state.params)
    src = SyntheticSource(SyntheticRolloutConfig(num_prompts=4, group_size=4, prompt_len=6,
                                                  response_len=6, target_token=3), learner, seed=0)
    rewards = []
    for step in range(steps):
        batch = src.sample(state.params, step)
        rewards.append(float(batch.reward.mean()))
        state, _ = learner.update(state, batch, ref)
    return state, rewards


@pytest.mark.slow
def test_learning_raises_synthetic_reward():
    """Policy gradient on the tiny policy: reward for emitting token 3 rises clearly."""
    cfg = LearnerConfig(lr=3e-3, clip_high=0.28, kl_coef=0.01, tis_cap=2.0, minibatches=2,
                        micro_batch_size=8, length_bucket=8, logprob_chunk=16)
    _, rewards = learn_synthetic(cfg, 30)
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > 0.4 and last > first + 0.3, rewards


def test_synthetic_rollout_is_seeded_and_consistent():
    mesh = sharding.make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    learner = make_learner(MODEL, LearnerConfig(kl_coef=0.0, logprob_chunk=16), mesh, seed=0)
    state = learner.init_state()
    src = SyntheticSource(SyntheticRolloutConfig(num_prompts=2, group_size=3), learner, seed=5)
    a, b, c = src.sample(state.params, 4), src.sample(state.params, 4), src.sample(state.params, 5)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    # the rollout log-probs are the learner's own log-probs of the sampled tokens
    lp = learner.logprobs(state.params, a)
    m = a.response_mask() > 0
    np.testing.assert_allclose(lp[m], a.rollout_logprobs[m], atol=1e-5)
    assert a.num_rows == 6 and set(np.unique(a.prompt_len)) == {8}


def test_group_advantages():
    r = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5], np.float32)
    adv = group_advantages(r, 2)
    np.testing.assert_allclose(adv, [1, -1, -1, 1, 0, 0])


def test_experience_validation_names_the_field():
    b = random_batch(n=4, length=12)
    d = b.to_dict()
    with pytest.raises(ExperienceError, match=r"experience.advantage: 3 rows, tokens has 4"):
        ExperienceBatch(**{**d, "advantage": d["advantage"][:3]})
    bad = d["response_len"].copy(); bad[2] = 40
    with pytest.raises(ExperienceError, match=r"experience.response_len: row 2"):
        ExperienceBatch(**{**d, "response_len": bad})
    adv = d["advantage"].copy(); adv[1] = np.nan
    with pytest.raises(ExperienceError, match=r"experience.advantage: row 1 is not finite"):
        ExperienceBatch(**{**d, "advantage": adv})
    with pytest.raises(ExperienceError, match=r"experience.tokens: expected integers"):
        ExperienceBatch(**{**d, "tokens": d["tokens"].astype(np.float32)})


def test_bucketing_and_row_padding():
    b = random_batch(n=5, length=40, seed=3)
    need = int(b.total_len().max())
    bb = b.bucketed(8)
    assert bb.length % 8 == 0 and need <= bb.length < need + 8
    np.testing.assert_array_equal(bb.response_mask()[:, :need], b.response_mask()[:, :need])
    p = b.pad_rows(4)
    assert p.num_rows == 8 and p.response_mask()[5:].sum() == 0


@pytest.mark.slow
def test_initial_state_from_converted_checkpoint(tmp_path):
    """model.init_checkpoint (cure-convert hf-to-orbax layout) gives exactly those params."""
    from flax import nnx

    from cure_jax import train as train_lib
    from cure_jax.config import ConfigError, load_config
    from cure_jax.convert_main import save_params_checkpoint

    mesh = sharding.make_mesh(data=1, fsdp=-1, tp=1, devices=jax.devices()[:2])
    arch = {f.name: getattr(MODEL, f.name) for f in dataclasses.fields(MODEL)
            if f.name not in ("attention_impl", "remat_policy")}
    cfgd = {"seed": 3, "model": {"arch": arch, "init_checkpoint": str(tmp_path / "ck")},
            "learner": {"kl_coef": 0.0}}
    settings = load_config(cfgd)
    learner = make_learner(MODEL, settings.learner, mesh, seed=7)
    other = make_learner(MODEL, settings.learner, mesh, seed=11).init_state()
    state_tree = nnx.state(learner.model(other.params))
    save_params_checkpoint(tmp_path / "ck", state_tree, MODEL)
    st = train_lib.initial_state(learner, settings)
    for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(other.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(st.step) == 0
    bad = load_config({**cfgd, "model": {**cfgd["model"], "init_checkpoint": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match=r"^config\.model\.init_checkpoint: .*nope"):
        train_lib.initial_state(learner, bad)


def test_cpu_dot_fusion_from_hidden_256_compiles_and_keeps_the_update():
    """From hidden size 256 the learner's programs on CPU let YNNPACK fuse each matmul with its
    elementwise neighbours (faster there, slower below; `learner.cpu_dot_fusion` turns it off);
    the update stays the same up to float rounding as without the option."""
    from cure_jax import learner as learner_module
    mesh = sharding.make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    wide = dataclasses.replace(MODEL, hidden_size=256, num_attention_heads=8, num_key_value_heads=4)
    cfg = LearnerConfig(lr=1e-3, kl_coef=0.0, kl_reference="none", logprob_chunk=8, length_bucket=32)
    off = dataclasses.replace(cfg, cpu_dot_fusion=False)
    options = learner_module.compiler_options(wide, cfg, mesh)
    assert options == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
    assert learner_module.compiler_options(MODEL, cfg, mesh) == {}
    assert learner_module.compiler_options(wide, off, mesh) == {}
    batch = random_batch()

    def one_update(learner_cfg):
        learner = make_learner(wide, learner_cfg, mesh, seed=0)
        state, _ = learner.update(learner.init_state(), batch)
        return jax.tree.map(np.asarray, jax.device_get(state.params)), learner
    fused, learner = one_update(cfg)
    assert learner._compiler_options == options
    plain, learner = one_update(off)
    assert learner._compiler_options == {}
    _close(fused, plain, atol=1e-4)   # Adam magnifies rounding where gradients are near 0
