"""`train_and_evaluate(config, workdir)`: the one trainer loop of cure-train.

It validates the whole config (`cure_jax.config.load_config`), builds the mesh and the learner,
starts from the newest checkpoint in `<workdir>/checkpoints` (else from `model.init_checkpoint`,
`model.hf_dir` or a seeded random init), then runs `train.steps` steps::

    exp = source.next(step, params, version)     # experience (cure_jax.sources)
    state = learner.update(state, exp.batch)      # one policy-gradient step (cure_jax.learner)
    source.publish(params, version, step)         # the new weights reach the sampler
    hooks                                         # evaluation, TensorBoard, console, stop, checkpoint

The experience source is the rollout server (`rollout.source = "cure"`: sampling, sandbox, CURE
rewards on the rollout side) or the in-process synthetic one (`"synthetic"`). The cadences
(`train.eval_every`, `log_every`, `histogram_every`, `text_every`, `checkpoint_every`) are hooks
(cure_jax.hooks); SIGTERM/SIGINT saves a checkpoint at the next step boundary and exits.

With several processes (one per host, cure_jax.distributed) every process runs this same loop
on its own experience; the learner's arrays span all of them, process 0 alone writes
TensorBoard and config.json, every process writes its shards of the checkpoints, and a process
that stops takes the others down within a second (cure_jax.peers).
"""
from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import jax

from cure_jax import distributed, hooks, peers, sharding
from cure_jax.checkpoint import Checkpointer
from cure_jax.config import Config, ConfigError, load_config
from cure_jax.learner import Learner, TrainState, make_learner
from cure_jax.sources import make_source
from cure_jax.summaries import SummaryWriter
from rollout.contract.checkpoint_layout import CHECKPOINTS_DIR

log = logging.getLogger(__name__)


def build_learner(cfg: Config) -> Learner:
    """The mesh of `cfg.mesh` and the learner of `cfg.model` / `cfg.learner` on it."""
    m = cfg.mesh
    try:
        mesh = sharding.make_mesh(data=m.data, fsdp=m.fsdp, tp=m.tp, dcn=m.dcn)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {str(e).removeprefix('make_mesh: ')}") from None
    return make_learner(cfg.model.qwen_config(), cfg.learner, mesh,
                        param_dtype=cfg.model.param_dtype, dtype=cfg.model.dtype, seed=cfg.seed)


def initial_state(learner: Learner, cfg: Config) -> TrainState:
    """The initial train state; its params as `config.model.weights` names them (see ModelConfig):
    `model.init_checkpoint` (an Orbax checkpoint written by `cure-convert hf-to-orbax` or a
    cure-train run), else the safetensors of `model.hf_dir`, else those of `rollout.model_path`
    (converted on the fly), or a seeded random init only with `model.init = "random"`. A source
    that cannot be read is a one-line ConfigError naming its field. A fresh optimizer state in
    every case."""
    from flax import nnx

    source = cfg.model.weights(cfg.rollout.model_path)
    if source is None:
        log.info("initial params: random (config.model.init=random, seed %d)", cfg.seed)
        return learner.init_state()
    field, path = source
    if field == "model.init_checkpoint":
        from cure_jax.convert_main import ConvertError, restore_params
        try:
            state = restore_params(path, learner.model_cfg,
                                   param_dtype=learner.param_dtype, mesh=learner.mesh)
        except (ConvertError, ValueError, FileNotFoundError) as e:
            raise ConfigError(f"config.model.init_checkpoint: {' '.join(str(e).split())}") from None
        log.info("initial params from %s", path)
        return learner.state_from_params(nnx.to_pure_dict(state))
    hf = pathlib.Path(path)
    if not any(hf.glob("*.safetensors")):
        what = "has no *.safetensors weights" if hf.is_dir() else "is not a local directory"
        raise ConfigError(
            f"config.{field}: {path!r} {what}, and the learner starts from its weights "
            f"(config.model.init is 'pretrained'): give a local HF directory with safetensors "
            f"weights, or set config.model.init_checkpoint (cure-convert hf-to-orbax), or "
            f"config.model.init=random")
    from cure_jax import hf_io
    try:
        state = hf_io.load_hf_params(hf, learner._abstract_state, learner.mesh,
                                     cfg=learner.model_cfg)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise ConfigError(f"config.{field}: {' '.join(str(e).split())}") from None
    log.info("initial params from %s (%s)", path, field)
    return learner.state_from_params(nnx.to_pure_dict(state))


def train_and_evaluate(config: Any, workdir: str | pathlib.Path) -> TrainState:
    """Validate `config`, then train in `workdir` (resuming); returns the final train state.

    Raises ConfigError, CheckpointError or (rollout-server source) RolloutServerError, each a
    one-line message that cure-train prints as `cure-train: error: ...` with exit status 1."""
    cfg = load_config(config)
    distributed.initialize()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=str))
    learner = build_learner(cfg)
    tc = cfg.train
    ckpt = Checkpointer(workdir / CHECKPOINTS_DIR, keep=tc.keep_checkpoints,
                        async_save=tc.async_checkpoint)
    initial = initial_state(learner, cfg)
    ref_params = None
    if cfg.learner.kl_coef > 0 and cfg.learner.kl_reference == "initial":
        ref_params = learner.reference_params(initial.params)
    restored = ckpt.restore_latest(learner.abstract_state())
    if restored is None:
        state, cursor, version = initial, 0, 0
        log.info("starting from scratch in %s", workdir)
    else:
        step, state, meta = restored
        cursor, version = int(meta.get("cursor", step)), int(meta.get("version", step))
        print(f"cure-train: resumed from checkpoint step {step} (cursor {cursor}, policy "
              f"version {version})", flush=True)
    del initial, restored

    writer = SummaryWriter(workdir / "tb")
    source = None
    checkpoints = None
    watch = None
    if jax.process_count() > 1:  # every process stops soon after any other one did
        watch = peers.PeerWatch(peers.exit_on_loss(
            "cure-train", lambda: source.abort() if source is not None else None)).start()
    try:
        source = make_source(cfg, learner, workdir)
        evaluation = hooks.Evaluation(source, writer, tc.eval_every)
        checkpoints = hooks.Checkpoints(ckpt, writer, tc.checkpoint_every,
                                        {"seed": cfg.seed, **source.checkpoint_meta()})
        step_hooks = [evaluation, hooks.Scalars(writer, tc.log_every),
                      hooks.Distributions(learner, writer, tc.histogram_every),
                      hooks.Texts(writer, tc.text_every), hooks.Console(), checkpoints]
        checkpoints.stop.install()
        source.start(state.params, version, cursor)
        evaluation.at_start(cursor)
        for step in range(cursor, tc.steps):
            t0 = time.perf_counter()
            exp = source.next(step, state.params, version)
            for h in step_hooks:
                if hasattr(h, "before_update"):
                    h.before_update(step, state.params, exp)
            t1 = time.perf_counter()
            metrics: dict[str, float] = {}
            if exp.batch is not None:
                state, metrics = learner.update(state, exp.batch, ref_params)
                version += 1
            scalars = {"time/learn_s": time.perf_counter() - t1}
            scalars.update(source.publish(state.params, version, step, exp.batch is not None))
            scalars["time/step_s"] = time.perf_counter() - t0
            scalars["policy/version"] = float(version)
            if exp.batch is not None:
                scalars["perf/step_tokens_per_s"] = (
                    metrics["perf/response_tokens"] / cfg.learner.ppo_epochs / scalars["time/step_s"])
            info = hooks.StepInfo(step=step, steps=tc.steps, state=state, version=version,
                                  experience=exp, metrics=metrics, scalars=scalars)
            for h in step_hooks:
                h.after_step(info)
        source.finish()
        if watch is not None:
            watch.end("cure-train: the run ended")
    except hooks.Preempted:  # every process stops after the same step
        if watch is not None:
            watch.end("cure-train: stopped by a signal")
        raise
    except BaseException:
        if watch is not None:
            watch.hold_if_fired()
        raise
    finally:
        if source is not None:
            source.close()
        ckpt.close()
        writer.close()
        if checkpoints is not None:
            checkpoints.stop.restore()
    return state
