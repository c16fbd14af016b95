"""The ``hf`` backend: transformers ``generate`` behind the engine interface; runs anywhere.

One ``generate`` call per prompt (``num_return_sequences = n``), seeded with ``seed + i`` for
prompt i. Log-probs are ``log_softmax`` of the scores generate actually sampled from (after
temperature / top-k / top-p), in float32, matching vLLM's ``processed_logprobs``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from rollout.engines import staging
from rollout.engines.base import (
    EngineConfig,
    Prompt,
    Sample,
    SamplingConfig,
    check_generate_args,
    truncate_at_stop,
)


def _torch_dtype(name: str) -> Any:
    import torch

    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def as_torch(x: Any) -> Any:
    """numpy array (bf16 via ml_dtypes or uint16 bits + name) or tensor -> torch, no copy."""
    import torch

    if isinstance(x, torch.Tensor):
        return x
    a = np.asarray(x)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def attention_implementation(device: Any, note: Any = print) -> str:
    """flash-attn 2 on a CUDA device when the `flash` extra is installed, else PyTorch SDPA
    (with a one-line note on CUDA, where flash-attn would be faster)."""
    import importlib.util

    if getattr(device, "type", str(device)) != "cuda":
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    note("hf engine: flash-attn is not installed (pip install '.[flash]'); attention runs on "
         "PyTorch SDPA", flush=True)
    return "sdpa"


class HFEngine:
    """transformers model + tokenizer; ``load_weights`` copies HF-named tensors in place."""

    def __init__(self, config: EngineConfig) -> None:
        import torch
        import transformers

        self.config = config
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(config.tokenizer or config.model)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            config.model, dtype=_torch_dtype(config.dtype),
            attn_implementation=attention_implementation(self.device))
        self.model = model.to(self.device).eval()
        self.eos_token_ids = self._eos_ids()
        self.pad_token_id = (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                             else self.eos_token_ids[0])
        self.weights_version = 0  # version of the last weights pushed (0: the model's own)

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if not ids:
            raise ValueError(f"{self.config.model}: neither the generation config nor the "
                             f"tokenizer names an EOS token")
        return ids

    def _encode(self, p: Prompt) -> list[int]:
        if isinstance(p, str):
            return list(self.tokenizer(p)["input_ids"])
        return [int(t) for t in p]

    def generate(self, prompts: Sequence[Prompt], n: int,
                 sampling: SamplingConfig) -> list[list[Sample]]:
        """n samples per prompt (see base.Sample)."""
        import torch
        import transformers

        prompts = check_generate_args(prompts, n)
        runs = 1 if sampling.greedy else n
        gc_kwargs: dict[str, Any] = dict(
            max_new_tokens=sampling.max_tokens, num_return_sequences=runs,
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id,
            return_dict_in_generate=True, output_scores=True)
        if sampling.greedy:
            gc_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            gc_kwargs.update(do_sample=True, temperature=sampling.temperature,
                             top_p=sampling.top_p, top_k=sampling.top_k)
        if sampling.stop:
            gc_kwargs["stop_strings"] = list(sampling.stop)
        gen_config = transformers.GenerationConfig(**gc_kwargs)
        results: list[list[Sample]] = []
        for i, p in enumerate(prompts):
            ids = self._encode(p)
            seed = sampling.request_seed(i)
            if seed is not None:
                torch.manual_seed(seed)
            inp = torch.tensor([ids], dtype=torch.long, device=self.device)
            with torch.inference_mode():
                out = self.model.generate(inp, attention_mask=torch.ones_like(inp),
                                          generation_config=gen_config,
                                          tokenizer=self.tokenizer if sampling.stop else None)
            seqs = out.sequences[:, len(ids):].tolist()
            # scores[t]: [runs, vocab] processed logits at step t -> log-probs (float32).
            steps = torch.stack(out.scores, 1).float() if out.scores else None
            samples = []
            for r, toks in enumerate(seqs):
                samples.append(self._finish(toks, steps[r] if steps is not None else None,
                                            ids, sampling))
            if runs == 1 and n > 1:  # greedy: n identical samples
                samples = [samples[0]] + [Sample(list(samples[0].token_ids), samples[0].text,
                                                 None if samples[0].logprobs is None
                                                 else samples[0].logprobs.copy(),
                                                 samples[0].finish_reason, list(ids))
                                          for _ in range(n - 1)]
            results.append(samples)
        return results

    def _finish(self, toks: list[int], scores: Any, prompt_ids: list[int],
                sampling: SamplingConfig) -> Sample:
        import torch

        eos = set(self.eos_token_ids)
        end = next((j for j, t in enumerate(toks) if t in eos), len(toks))
        body = toks[:end]
        dec = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)
        text = dec(body)
        cut_text, hit = truncate_at_stop(text, sampling.stop) if sampling.stop else (text, False)
        if hit:
            k = len(body)  # the shortest prefix whose text still holds a stop string
            while k > 1 and truncate_at_stop(dec(body[:k - 1]), sampling.stop)[1]:
                k -= 1
            keep, text, reason = body[:k], cut_text, "stop"
        elif end < len(toks):
            keep, reason = toks[:end + 1], "stop"
        else:
            keep, reason = toks, "length"
        lp = None
        if sampling.logprobs and scores is not None:
            logp = torch.log_softmax(scores[:len(keep)], dim=-1)
            lp = logp.gather(-1, torch.tensor(keep, device=logp.device)[:, None])[:, 0]
            lp = lp.cpu().numpy().astype(np.float32)
        return Sample(list(keep), text, lp, reason, list(prompt_ids))

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Copy HF-named tensors into the model's parameters in place (dtype cast on copy)."""
        import torch

        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        device = next(iter(params.values())).device
        if getattr(self, "_staging", None) is None or self._staging.device != device:
            self._staging = staging.for_device(device)  # GPU: reused pinned buffers
        with torch.no_grad():
            for name, t in named_tensors:
                if name not in params:
                    raise KeyError(f"load_weights: {self.config.model} has no parameter {name!r}")
                dst = params[name]
                src = as_torch(t)
                if tuple(src.shape) != tuple(dst.shape):
                    raise ValueError(f"load_weights: {name!r} has shape {tuple(src.shape)}, "
                                     f"the model expects {tuple(dst.shape)}")
                dst.copy_(src if self._staging is None else self._staging.to_device(src))
            if self._staging is not None:
                self._staging.synchronize()

    def close(self) -> None:
        self.model = None
