"""The trainer loop's hooks on real event files and a real Orbax checkpointer."""
from __future__ import annotations

import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cure_jax import hooks
from cure_jax.checkpoint import Checkpointer
from cure_jax.experience import ExperienceBatch
from cure_jax.sources.base import Experience
from cure_jax.summaries import SummaryWriter


def _batch(n: int = 4, length: int = 6) -> ExperienceBatch:
    tokens = np.arange(n * length, dtype=np.int32).reshape(n, length) % 7
    return ExperienceBatch(tokens=tokens, prompt_len=np.full(n, 2, np.int32),
                           response_len=np.full(n, 3, np.int32),
                           rollout_logprobs=np.zeros((n, length), np.float32),
                           advantage=np.linspace(-1, 1, n).astype(np.float32),
                           kind=np.zeros(n, np.int8), problem_id=np.zeros(n, np.int32),
                           policy_version=np.zeros(n, np.int32), reward=np.ones(n, np.float32))


def _info(step: int, steps: int = 6, state=None) -> hooks.StepInfo:
    exp = Experience(batch=_batch(), version=step, rows=4, scalars={"reward/mean": 0.5 + step},
                     texts={"samples/code": f"print({step})"}, summary="reward 0.5")
    return hooks.StepInfo(step=step, steps=steps, state=state, version=step + 1, experience=exp,
                          metrics={"pg_loss": 0.1 * step, "kl": 0.0, "not_a_tag": 1.0},
                          scalars={"time/learn_s": 0.5, "time/step_s": 1.0})


def _events(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_due():
    assert [c for c in range(7) if hooks.due(3, c)] == [0, 3, 6]
    assert not any(hooks.due(0, c) for c in range(5))  # 0 turns a cadence off


def test_cadences_write_what_they_should_at_their_steps(tmp_path, capsys):
    writer = SummaryWriter(tmp_path / "tb")
    step_hooks = [hooks.Scalars(writer, 2), hooks.Distributions(None, writer, 3),
                  hooks.Texts(writer, 4), hooks.Console()]
    for step in range(6):
        for h in step_hooks:
            h.after_step(_info(step))
    writer.close()
    acc = _events(tmp_path / "tb")
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("reward/mean")] == [0, 2, 4]
    assert [e.value for e in acc.Scalars("loss/pg")] == pytest.approx([0.0, 0.2, 0.4])
    assert "time/step_s" in tags["scalars"] and "not_a_tag" not in tags["scalars"]
    assert [e.step for e in acc.Histograms("dist/advantage")] == [0, 3]
    assert sorted({e.step for t in tags["tensors"] if t.startswith("samples/code")
                   for e in acc.Tensors(t)}) == [0, 4]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[0].startswith("step 1/6 v1 | reward 0.5 | rows 4/4 | pg 0.0000")


def test_checkpoints_at_cadence_at_the_end_and_on_a_signal(tmp_path):
    writer = SummaryWriter(tmp_path / "tb")
    ckpt = Checkpointer(tmp_path / "ck", keep=10, async_save=False)
    state = {"w": jnp.arange(3.0)}
    h = hooks.Checkpoints(ckpt, writer, 4, {"seed": 7, "source": "synthetic"})
    h.stop.install()
    try:
        for step in range(6):
            h.after_step(_info(step, steps=6, state=state))
        assert ckpt.all_steps() == [4, 6]  # every 4 completed steps, and the last
        _, meta = ckpt.restore(6, state)
        assert (meta["cursor"], meta["version"], meta["seed"], meta["source"]) == (6, 6, 7, "synthetic")
        os.kill(os.getpid(), signal.SIGTERM)  # remembered, acted on at the next step boundary
        with pytest.raises(hooks.Preempted) as stopped:
            h.after_step(_info(6, steps=10, state=state))
        assert stopped.value.code == 128 + signal.SIGTERM
        assert ckpt.all_steps()[-1] == 7
    finally:
        h.stop.restore()
        ckpt.close()
        writer.close()


def test_eval_scalars_name_bon_pairs():
    assert hooks.eval_scalars({"code_accuracy": 0.5, "bon": {"4x4": 0.75, "1x0": None},
                               "verdicts": {"OK": 3}}) == {"eval/code_accuracy": 0.5,
                                                          "eval/bon_4x4": 0.75}
