"""The trainer loop's cadences as small hooks: evaluation, TensorBoard, console, stop, checkpoint.

`cure_jax.train.train_and_evaluate` runs, after every step, each hook whose cadence is due, in
the order they were added (evaluation first, so the console line and TensorBoard see its
numbers; the stop signal and the checkpoint last). A cadence of 0 turns a hook off. Hooks that
need the batch before the update (the learner-vs-rollout log-prob histogram) also get
`before_update`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np

from cure_jax import distributed
from cure_jax.checkpoint import Checkpointer, StopSignal
from cure_jax.sources.base import Experience, ExperienceSource
from cure_jax.summaries import SummaryWriter

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


@dataclasses.dataclass
class StepInfo:
    """Everything a hook may read about the step that just finished."""

    step: int                          # the step just trained (0-based)
    steps: int                         # train.steps
    state: Any                         # TrainState after the update
    version: int                       # policy version after the update
    experience: Experience
    metrics: dict[str, float]          # the learner's (empty when nothing was trained)
    scalars: dict[str, float]          # timings and source scalars gathered by the loop
    eval_metrics: dict[str, Any] | None = None

    @property
    def done(self) -> int:
        return self.step + 1


def due(every: int, count: int) -> bool:
    """A cadence of `every` (0: never) is due at `count`."""
    return bool(every) and count % every == 0


def fmt(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def eval_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Held-out metrics -> `eval/*` TensorBoard tags (BoN pairs as `eval/bon_NxM`, their
    accumulate accuracies as `eval/bon_accumulate_NxM`)."""
    out = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    for name in ("bon", "bon_accumulate"):
        out.update({f"eval/{name}_{k}": v for k, v in (metrics.get(name) or {}).items()
                    if v is not None})
    return out


class Evaluation:
    """Held-out evaluation every `every` completed steps (and at step 0 of a fresh run)."""

    def __init__(self, source: ExperienceSource, writer: SummaryWriter, every: int) -> None:
        self.source, self.writer, self.every = source, writer, every

    def run(self, step: int) -> dict[str, Any] | None:
        metrics = self.source.evaluate()
        if metrics is not None:
            self.writer.scalars(step, eval_scalars(metrics))
        return metrics

    def at_start(self, cursor: int) -> None:
        if self.every and cursor == 0:  # the starting point of the eval curves
            m = self.run(0)
            if m is not None and jax.process_index() == 0:
                print(f"step 0 eval code {fmt(m.get('code_accuracy'))} ut "
                      f"{fmt(m.get('unit_test_accuracy'))}", flush=True)

    def after_step(self, info: StepInfo) -> None:
        if due(self.every, info.done):
            t0 = time.perf_counter()
            info.eval_metrics = self.run(info.done)
            info.scalars["time/eval_s"] = time.perf_counter() - t0


class Scalars:
    """Learner metrics, timings and the source's scalars, every `every` steps."""

    def __init__(self, writer: SummaryWriter, every: int) -> None:
        self.writer, self.every = writer, every

    def after_step(self, info: StepInfo) -> None:
        if due(self.every, info.step):
            values = dict(info.experience.scalars)
            values.update({tag: info.metrics[k] for k, tag in SCALAR_TAGS.items()
                           if k in info.metrics})
            values.update(info.scalars)
            self.writer.scalars(info.step, values)


class Distributions:
    """Histograms of the advantages and of learner-minus-rollout log-probs (before the update)."""

    def __init__(self, learner: Any, writer: SummaryWriter, every: int) -> None:
        self.learner, self.writer, self.every = learner, writer, every
        self._log_ratio: np.ndarray | None = None

    def before_update(self, step: int, params: Any, exp: Experience) -> None:
        self._log_ratio = None
        if due(self.every, step) and exp.batch is not None:
            batch = exp.batch
            lp = self.learner.logprobs(params, batch)
            self._log_ratio = (lp - batch.rollout_logprobs)[batch.response_mask() > 0]

    def after_step(self, info: StepInfo) -> None:
        batch = info.experience.batch
        if due(self.every, info.step) and batch is not None:
            self.writer.histogram(info.step, "dist/advantage", batch.advantage)
            if self._log_ratio is not None:
                self.writer.histogram(info.step, "dist/log_ratio_learner_vs_rollout", self._log_ratio)


class Texts:
    """What the policy writes right now (the source's sample texts), every `every` steps."""

    def __init__(self, writer: SummaryWriter, every: int) -> None:
        self.writer, self.every = writer, every

    def after_step(self, info: StepInfo) -> None:
        if due(self.every, info.step):
            for tag, text in info.experience.texts.items():
                self.writer.text(info.step, tag, text)


class Console:
    """One line per step (process 0): progress, the source's summary, losses, timings, evaluation."""

    def after_step(self, info: StepInfo) -> None:
        if jax.process_index() != 0:
            return
        exp, m, s = info.experience, info.metrics, info.scalars
        # every process's rows (the sources report them); this process's own otherwise
        local = 0 if exp.batch is None else exp.batch.num_rows
        trained = int(exp.scalars.get("batch/rows_trained", local))
        ev = info.eval_metrics
        print(f"step {info.done}/{info.steps} v{info.version} | {exp.summary} | rows "
              f"{trained}/{exp.rows} | pg {fmt(m.get('pg_loss'), '.4f')} kl "
              f"{fmt(m.get('kl'), '.4f')} | learn {s['time/learn_s']:.1f}s sync "
              f"{s.get('time/sync_s', 0.0):.2f}s step {s['time/step_s']:.1f}s"
              + ("" if ev is None else f" | eval code {fmt(ev.get('code_accuracy'))} ut "
                 f"{fmt(ev.get('unit_test_accuracy'))}"), flush=True)


class Checkpoints:
    """Save every `every` completed steps and after the last; on SIGTERM/SIGINT save and stop.

    The checkpoint's JSON item holds the data cursor (next step), the policy version and `meta`
    (the seed and the source's facts), which is all a resumed run needs besides the arrays."""

    def __init__(self, ckpt: Checkpointer, writer: SummaryWriter, every: int,
                 meta: dict[str, Any]) -> None:
        self.ckpt, self.writer, self.every, self.meta = ckpt, writer, every, meta
        self.stop = StopSignal()

    def save(self, info: StepInfo) -> None:
        self.ckpt.save(info.done, info.state, {"cursor": info.done, "version": info.version,
                                               "time": time.time(), **self.meta})

    def after_step(self, info: StepInfo) -> None:
        self.writer.flush()
        # A signal to any process stops every process after the same step.
        if distributed.global_sum(int(self.stop.requested)):
            self.save(info)
            self.ckpt.wait()
            self.writer.flush()
            log.warning("stopped by signal %s after step %d; checkpoint saved", self.stop.signum,
                        info.step)
            raise Preempted(128 + (self.stop.signum or 0))
        if due(self.every, info.done) or info.done == info.steps:
            self.save(info)
