"""Shared checks for the engine and weight-push tests (vLLM config, the learner's log-probs)."""
from __future__ import annotations

import numpy as np


def vllm_config(model_dir) -> dict:
    return dict(backend="vllm", model=str(model_dir), dtype="float32", enforce_eager=True,
                distributed_executor_backend="uni", in_process=True, max_model_len=256,
                gpu_memory_utilization=0.5, seed=0)


def pick_stop(text: str, start: int = 3) -> str:
    """A 2-character printable-ASCII piece of ``text`` at or after ``start`` (a stop string)."""
    for j in range(start, len(text) - 1):
        piece = text[j:j + 2]
        if piece.isascii() and piece.isprintable() and piece.strip():
            return piece
    raise AssertionError(f"no printable stop candidate in {text!r}")


def teacher_forced_logprobs(hf_engine, prompt_ids, token_ids, temperature: float) -> np.ndarray:
    """log_softmax(logits / T) of ``token_ids`` after ``prompt_ids``, float32 (the learner's view)."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(token_ids)])
    with torch.no_grad():
        logits = hf_engine.model(ids).logits[0].float()
    logits = logits[len(prompt_ids) - 1:-1]
    if temperature > 0:
        logits = logits / temperature
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(token_ids)[:, None])[:, 0]
    return lp.numpy().astype(np.float32)


_SHARED: dict = {}


def shared_model_dir():
    """One tiny random Qwen2 model (+ tokenizer) per test process, removed at exit."""
    if "dir" not in _SHARED:
        import atexit
        import shutil
        import tempfile

        from tests.helpers.tiny_models import make_tiny_hf_dir

        tmp = tempfile.mkdtemp(prefix="cure-engines-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        _SHARED["dir"] = make_tiny_hf_dir(tmp, family="qwen2", seed=0)
    return _SHARED["dir"]


def shared_hf_engine():
    """The hf backend on :func:`shared_model_dir` (float32, CPU), built once per process."""
    if "hf" not in _SHARED:
        from rollout.engines import make_engine

        _SHARED["hf"] = make_engine(dict(backend="hf", model=str(shared_model_dir()),
                                         dtype="float32", device="cpu"))
    return _SHARED["hf"]


def shared_vllm_engine():
    """The in-process vLLM engine on :func:`shared_model_dir`, built once per process
    (it costs seconds); tests that push weights must restore the originals."""
    if "vllm" not in _SHARED:
        from rollout.engines import make_engine

        _SHARED["vllm"] = make_engine(vllm_config(shared_model_dir()))
    return _SHARED["vllm"]
