"""A random placeholder policy's Hugging Face directory, built locally and deterministically.

``configs/tiny.py`` trains a tiny Qwen2 model from random weights (not the shipped tiny coder in
``rollout/assets/tiny_coder``); vLLM and transformers need a HF directory for it (config.json,
tokenizer, weights). :func:`ensure_random_policy_dir` writes one when absent:

- config.json: the learner's architecture (the dict cure-train sends, ``QwenConfig.to_hf_dict``)
  with the tokenizer's special token ids;
- a byte-level BPE tokenizer trained on the project's own text (embedded problems, prompt
  templates, a little Python), exactly ``vocab_size`` entries (padded with reserved tokens if the
  corpus yields fewer merges), so every id the model can emit decodes;
- seeded random weights (transformers, float32). They are placeholders: cure-train pushes the
  learner's own initial weights (version 0) into the engine before the first rollout.

No downloads. Building takes about a second.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

__all__ = ["SPECIAL_TOKENS", "ensure_random_policy_dir", "tokenizer_corpus"]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_DONE = ".cure_tiny_complete"

_PY_SNIPPETS = (
    ("import sys\n\ndef main():\n    data = sys.stdin.read().split()\n    n = int(data[0])\n"
    "    print(sum(map(int, data[1:n + 1])))\n\nmain()\n"),
    "n = int(input())\nfor i in range(n):\n    a, b = map(int, input().split())\n    print(a + b)\n",
    "s = input().strip()\nprint(s[::-1])\n",
    "x = list(map(int, input().split()))\nprint(max(x), min(x))\nprint(' '.join(map(str, sorted(x))))\n",
)


def tokenizer_corpus() -> list[str]:
    """The text the placeholder policy's tokenizer is trained on (deterministic order)."""
    from rollout.problems import embedded_problems
    from rollout.prompts import TEMPLATE_DIR

    texts: list[str] = []
    for p in embedded_problems("all"):
        texts.append(p.question)
        texts.extend(p.example_input + p.example_output + p.test_input[:3] + p.test_output[:3])
        texts.extend(p.solutions[:1])
    for t in sorted(TEMPLATE_DIR.glob("*.jinja")):
        texts.append(t.read_text(encoding="utf-8"))
    texts.extend(_PY_SNIPPETS)
    texts.append("**Test Input:**\n```\n1\n```\n\n**Test Output:**\n```\n1\n```\n\n**Explanation:**\n")
    return texts


def _train_tokenizer(out: pathlib.Path, vocab_size: int) -> dict[str, int]:
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(tokenizer_corpus() * 4, trainer=trainer)
    have = tok.get_vocab_size()
    if have > vocab_size:
        raise ValueError(f"random policy tokenizer: vocab_size={vocab_size} is below the byte alphabet "
                         f"plus special tokens ({have})")
    if have < vocab_size:  # every id the model can sample must decode
        tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True)
                                for i in range(vocab_size - have)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(str(out))
    return {"eos": int(fast.eos_token_id), "pad": int(fast.pad_token_id)}


def ensure_random_policy_dir(out_dir: str | os.PathLike[str], hf_config: Mapping[str, Any],
                       seed: int = 0) -> pathlib.Path:
    """Write a complete HF directory for ``hf_config`` at ``out_dir`` unless one is there.

    The directory is built in a temporary sibling and renamed into place, so a crash never
    leaves a half-built model behind; an existing complete directory is returned as is.
    """
    import torch
    import transformers

    out = pathlib.Path(out_dir)
    if (out / _DONE).exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        cfg = dict(hf_config)
        vocab = int(cfg["vocab_size"])
        ids = _train_tokenizer(tmp, vocab)
        cfg.update(bos_token_id=ids["eos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
        cfg["torch_dtype"] = "float32"
        config = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items()
                                                      if k != "architectures"})
        config.architectures = list(cfg.get("architectures") or ["Qwen2ForCausalLM"])
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(str(tmp), safe_serialization=True)
        gen = {"bos_token_id": ids["eos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=1))
        (tmp / _DONE).write_text("ok\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
