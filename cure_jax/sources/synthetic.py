"""The in-process synthetic experience source: the policy samples, the reward counts a target token.

It exercises the learner, checkpoints, summaries and the launcher end to end without a rollout
server (`rollout.source = "synthetic"`). For step s, prompts are random token ids drawn from
key = fold_in(PRNGKey(seed), s); each prompt gets `group_size` responses sampled from the
current policy (full forward per new token: the model is tiny); the reward of a response is the
share of its tokens equal to `target_token`; the advantage is the reward z-scored within its
prompt's group (population std; a zero-std group carries no signal and gets 0). Given the same
params and step the batch is bitwise the same, which exact resume relies on. With several
processes every one samples the whole batch and trains on its share of the prompt groups.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.config import SyntheticRolloutConfig
from cure_jax.experience import ExperienceBatch
from cure_jax.sources.base import Experience


def group_advantages(reward: np.ndarray, group_size: int) -> np.ndarray:
    r"""A_i = (r_i - mean_g) / std_g over each consecutive group; 0 where std_g = 0."""
    r = reward.reshape(-1, group_size).astype(np.float64)
    mean, std = r.mean(axis=1, keepdims=True), r.std(axis=1, keepdims=True)
    adv = np.where(std > 0, (r - mean) / np.where(std > 0, std, 1.0), 0.0)
    return adv.reshape(-1).astype(np.float32)


class SyntheticSource:
    """`sample(params, step) -> ExperienceBatch` from the learner's current policy; as an
    experience source (cure_jax.sources.base) it has nothing to start, publish or evaluate."""

    def __init__(self, cfg: SyntheticRolloutConfig, learner, seed: int):
        self.cfg, self.learner, self.seed = cfg, learner, seed
        vocab = learner.model_cfg.vocab_size
        if cfg.num_prompts < jax.process_count():
            raise ValueError(f"config.rollout.synthetic.num_prompts: {cfg.num_prompts} prompts "
                             f"cannot be shared by {jax.process_count()} processes")
        if cfg.target_token >= vocab:
            raise ValueError(f"config.rollout.synthetic.target_token: {cfg.target_token} >= vocab_size {vocab}")
        self._jit = jax.jit(self._generate, in_shardings=(learner.param_shardings, learner.replicated),
                            out_shardings=learner.replicated)

    def _generate(self, params, key):
        cfg = self.cfg
        n = cfg.num_prompts * cfg.group_size
        length = cfg.prompt_len + cfg.response_len
        kp, ks = jax.random.split(key)
        prompts = jax.random.randint(kp, (cfg.num_prompts, cfg.prompt_len), 0,
                                     self.learner.model_cfg.vocab_size, dtype=jnp.int32)
        tokens = jnp.zeros((n, length), jnp.int32).at[:, :cfg.prompt_len].set(
            jnp.repeat(prompts, cfg.group_size, axis=0))
        logps = jnp.zeros((n, length), jnp.float32)
        model = self.learner.model(params)

        def body(j, carry):
            tokens, logps = carry
            pos = cfg.prompt_len + j
            hidden = model(tokens)
            h = jax.lax.dynamic_index_in_dim(hidden, pos - 1, axis=1, keepdims=False)
            logits = model.logits(h).astype(jnp.float32) / cfg.temperature
            tok = jax.random.categorical(jax.random.fold_in(ks, j), logits).astype(jnp.int32)
            lp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], axis=-1)[:, 0]
            tokens = jax.lax.dynamic_update_index_in_dim(tokens, tok, pos, axis=1)
            logps = jax.lax.dynamic_update_index_in_dim(logps, lp, pos, axis=1)
            return tokens, logps
        return jax.lax.fori_loop(0, cfg.response_len, body, (tokens, logps))

    def sample(self, params, step: int) -> ExperienceBatch:
        cfg = self.cfg
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        with jax.set_mesh(self.learner.mesh):
            tokens, logps = jax.device_get(self._jit(params, key))
        tokens, logps = np.asarray(tokens), np.asarray(logps)
        n = tokens.shape[0]
        response = tokens[:, cfg.prompt_len:]
        reward = (response == cfg.target_token).mean(axis=1).astype(np.float32)
        return ExperienceBatch(
            tokens=tokens, prompt_len=np.full(n, cfg.prompt_len, np.int32),
            response_len=np.full(n, cfg.response_len, np.int32), rollout_logprobs=logps,
            advantage=group_advantages(reward, cfg.group_size),
            kind=(np.arange(n) // cfg.group_size % 2).astype(np.int8),
            problem_id=(step * cfg.num_prompts + np.arange(n) // cfg.group_size).astype(np.int32),
            policy_version=np.full(n, step, np.int32), reward=reward)

    # -- the experience-source interface
    def start(self, params: Any, version: int, cursor: int) -> None:
        pass

    def local_share(self, batch: ExperienceBatch) -> ExperienceBatch:
        """This process's contiguous share of the prompt groups (all of them with one process)."""
        if jax.process_count() == 1:
            return batch
        groups = np.array_split(np.arange(self.cfg.num_prompts), jax.process_count())
        mine = groups[jax.process_index()]
        g = self.cfg.group_size
        return batch.select(np.arange(mine[0] * g, (mine[-1] + 1) * g))  # num_prompts >= P

    def next(self, step: int, params: Any, version: int) -> Experience:
        t0 = time.perf_counter()
        batch = self.sample(params, step)
        wait = time.perf_counter() - t0
        reward = float(batch.reward.mean())
        return Experience(
            batch=self.local_share(batch), version=version, rows=batch.num_rows, wait_s=wait,
            scalars={"reward/mean": reward, "reward/max": float(batch.reward.max()),
                     "advantage/abs_mean": float(np.abs(batch.advantage).mean()),
                     "batch/rows_trained": float(batch.num_rows), "time/sample_s": wait},
            texts={"samples/responses": _sample_text(batch)},
            summary=f"reward {reward:.3f} | sample {wait:.2f}s")

    def publish(self, params: Any, version: int, step: int, updated: bool) -> dict[str, float]:
        return {}

    def evaluate(self) -> None:
        return None

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"source": "synthetic"}

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _sample_text(batch: ExperienceBatch, rows: int = 2) -> str:
    lines = []
    for i in range(min(rows, batch.num_rows)):
        p, r = int(batch.prompt_len[i]), int(batch.response_len[i])
        lines.append(f"prompt {batch.tokens[i, :p].tolist()} -> response "
                     f"{batch.tokens[i, p:p + r].tolist()} (reward {float(batch.reward[i]):.3f}, "
                     f"advantage {float(batch.advantage[i]):+.3f})")
    return "\n\n".join(lines)
