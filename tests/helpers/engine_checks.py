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
