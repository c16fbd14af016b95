"""`train_and_evaluate(config, workdir)`: the learner side of cure-train.

`rollout.source = "cure"` runs the CURE loop of `cure_jax.driver` (rollout server, sandbox,
CURE rewards, weight sync, evaluation). `rollout.source = "synthetic"` runs the learner alone
on the seeded synthetic source below: it builds the mesh, the learner and its state (resuming
from the newest checkpoint in `<workdir>/checkpoints` when there is one), then runs
`train.steps` RL steps.

Per step: sample experience, update the policy, write TensorBoard summaries (process 0), save
a checkpoint every `train.checkpoint_every` steps, at the end, and on SIGTERM/SIGINT (then exit).
The driver state saved beside the arrays holds the data cursor (next step to sample).
"""
from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import jax
import numpy as np

from cure_jax import checkpoint as ckpt_lib
from cure_jax import distributed, sharding
from cure_jax.config import Settings, validate_config
from cure_jax.summaries import SummaryWriter
from cure_jax.learner import Learner, TrainState, make_learner

log = logging.getLogger(__name__)

SCALAR_TAGS = {  # learner metric -> TensorBoard tag
    "pg_loss": "loss/pg", "kl": "loss/kl", "entropy": "policy/entropy",
    "clip_frac": "loss/clip_frac", "dual_clip_frac": "loss/dual_clip_frac",
    "log_ratio": "policy/log_ratio", "abs_log_ratio": "policy/abs_log_ratio",
    "tis_weight": "policy/tis_weight", "grad_norm": "opt/grad_norm", "lr": "opt/lr",
    "perf/tokens_per_s": "perf/tokens_per_s", "perf/padded_tokens": "perf/padded_tokens",
    "perf/response_tokens": "perf/response_tokens",
    "time/prep_s": "time/logprobs_s", "time/update_s": "time/update_s",
}


class Preempted(SystemExit):
    """Raised after the checkpoint that a SIGTERM/SIGINT asked for is safely written."""


def build(settings: Settings) -> tuple[Learner, Any]:
    """Mesh and learner from validated settings."""
    m = settings.mesh
    mesh = sharding.make_mesh(data=m.data, fsdp=m.fsdp, tp=m.tp)
    learner = make_learner(settings.model.qwen_config(), settings.learner, mesh,
                           param_dtype=settings.model.param_dtype, dtype=settings.model.dtype,
                           seed=settings.seed)
    return learner, mesh


def _initial_state(learner: Learner, settings: Settings) -> TrainState:
    """Initial train state: params from `model.init_checkpoint` (an Orbax checkpoint written by
    `cure-convert hf-to-orbax` or a cure-train run), else from the safetensors of `model.hf_dir`,
    else a seeded random init; fresh optimizer state in every case."""
    from flax import nnx

    from cure_jax.config import ConfigError
    m = settings.model
    if m.init_checkpoint:
        from cure_jax.convert_main import ConvertError, restore_params
        try:
            state = restore_params(m.init_checkpoint, learner.model_cfg,
                                   param_dtype=learner.param_dtype, mesh=learner.mesh)
        except (ConvertError, ValueError, FileNotFoundError) as e:
            raise ConfigError(f"config.model.init_checkpoint: {' '.join(str(e).split())}") from None
        log.info("initial params from %s", m.init_checkpoint)
        return learner.state_from_params(nnx.to_pure_dict(state))
    if m.hf_dir and any(pathlib.Path(m.hf_dir).glob("*.safetensors")):
        from cure_jax import hf_io
        try:
            state = hf_io.load_hf_params(m.hf_dir, learner._abstract_state, learner.mesh,
                                         cfg=learner.model_cfg)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"config.model.hf_dir: {' '.join(str(e).split())}") from None
        log.info("initial params from %s", m.hf_dir)
        return learner.state_from_params(nnx.to_pure_dict(state))
    return learner.init_state()


def _sample_text(batch, rows: int = 2) -> str:
    lines = []
    for i in range(min(rows, batch.num_rows)):
        p, r = int(batch.prompt_len[i]), int(batch.response_len[i])
        lines.append(f"prompt {batch.tokens[i, :p].tolist()} -> response "
                     f"{batch.tokens[i, p:p + r].tolist()} (reward {float(batch.reward[i]):.3f}, "
                     f"advantage {float(batch.advantage[i]):+.3f})")
    return "\n\n".join(lines)


def rollout_source(config: Any) -> str:
    r = config.get("rollout") if hasattr(config, "get") else None
    return (r.get("source") if r is not None and hasattr(r, "get") else None) or "synthetic"


def validate(config: Any) -> None:
    """Check the whole config before any work (ConfigError naming the field).

    With `rollout.source = "cure"` the CURE loop (cure_jax.driver) owns the config's rollout
    and train-loop fields and validates them together with the learner's sections."""
    from cure_jax.driver import cure_settings, learner_view
    validate_config(learner_view(config))
    if rollout_source(config) == "cure":
        cure_settings(config)


def train_and_evaluate(config: Any, workdir: str | pathlib.Path) -> TrainState:
    """Validate `config`, then train (resuming from `workdir`); returns the final train state.

    `rollout.source = "cure"` runs the CURE loop with its rollout server (cure_jax.driver);
    `"synthetic"` runs the learner on the seeded synthetic source below. Raises ConfigError,
    CheckpointError or (CURE loop) RolloutServerError, each a one-line message; cure-train
    (cure_jax.train_main) turns them into `cure-train: error: ...` and exit status 1."""
    from cure_jax.driver import learner_view, train_cure
    if rollout_source(config) == "cure":
        return train_cure(config, workdir)
    settings = validate_config(learner_view(config))
    distributed.initialize()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(
            config.to_dict() if hasattr(config, "to_dict") else dict(config), indent=1, default=str))
    learner, _ = build(settings)
    from cure_jax.synthetic_rollout import SyntheticRollout
    source = SyntheticRollout(settings.synthetic, learner, settings.seed)

    tc = settings.train
    ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=tc.keep_checkpoints,
                                 async_save=tc.async_checkpoint)
    initial = _initial_state(learner, settings)
    ref_params = None
    if settings.learner.kl_coef > 0 and settings.learner.kl_reference == "initial":
        ref_params = learner.reference_params(initial.params)
    restored = ckpt.restore_latest(learner.abstract_state())
    if restored is None:
        state, cursor = initial, 0
        log.info("starting from scratch in %s", workdir)
    else:
        step, state, driver = restored
        cursor = int(driver.get("cursor", step))
        log.info("resumed from step %d (cursor %d) in %s", step, cursor, workdir)
        print(f"cure-train: resumed from checkpoint step {step}", flush=True)
        del initial
    writer = SummaryWriter(workdir / "tb")
    stop = ckpt_lib.StopSignal().install()

    def save(next_cursor: int) -> None:
        ckpt.save(next_cursor, state, {"cursor": next_cursor, "source": settings.rollout_source,
                                       "seed": settings.seed, "time": time.time()})

    try:
        for step in range(cursor, tc.steps):
            t0 = time.perf_counter()
            batch = source.sample(state.params, step)
            t_sample = time.perf_counter() - t0
            hist_step = tc.histogram_every and step % tc.histogram_every == 0
            learner_vs_rollout = None
            if hist_step:
                lp = learner.logprobs(state.params, batch)
                m = batch.response_mask() > 0
                learner_vs_rollout = (lp - batch.rollout_logprobs)[m]
            state, metrics = learner.update(state, batch, ref_params)
            t_step = time.perf_counter() - t0
            if tc.log_every and step % tc.log_every == 0:
                scalars = {tag: metrics[k] for k, tag in SCALAR_TAGS.items() if k in metrics}
                scalars.update({"reward/mean": float(batch.reward.mean()),
                                "reward/max": float(batch.reward.max()),
                                "advantage/abs_mean": float(np.abs(batch.advantage).mean()),
                                "time/sample_s": t_sample, "time/step_s": t_step,
                                "perf/step_tokens_per_s": float(batch.response_mask().sum()) / t_step})
                writer.scalars(step, scalars)
                log.info("step %d reward %.3f pg %.4f kl %.4f grad_norm %.3f (%.2fs)", step,
                         scalars["reward/mean"], metrics["pg_loss"], metrics["kl"],
                         metrics["grad_norm"], t_step)
            if hist_step:
                writer.histogram(step, "dist/advantage", batch.advantage)
                writer.histogram(step, "dist/log_ratio_learner_vs_rollout", learner_vs_rollout)
            if tc.text_every and step % tc.text_every == 0:
                writer.text(step, "samples/responses", _sample_text(batch))
            done = step + 1
            if stop.requested:
                save(done)
                ckpt.wait()
                writer.flush()
                log.warning("stopped by signal %s after step %d; checkpoint saved", stop.signum, step)
                raise Preempted(128 + (stop.signum or 0))
            if (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == tc.steps:
                save(done)
            if step % 10 == 0:
                writer.flush()
    finally:
        ckpt.close()
        writer.close()
        stop.restore()
    return state
