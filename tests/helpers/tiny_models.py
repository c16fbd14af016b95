"""Builders for tiny random Hugging Face Qwen models and a tiny byte-level BPE tokenizer.

Everything is made locally (torch.manual_seed + transformers config, tokenizers BPE trainer):
no downloads. Shapes respect vLLM's CPU kernels (head_dim >= 32).
"""
from __future__ import annotations

import json
import pathlib

PRESETS = pathlib.Path(__file__).resolve().parents[2] / "cure_jax" / "models" / "qwen" / "presets"


def _shape(preset: str) -> dict:
    d = json.loads((PRESETS / f"{preset}.json").read_text())
    d.pop("torch_dtype", None)
    d.pop("tie_word_embeddings", None)
    return d


# family -> HF config fields of the tiny variants (cure_jax/models/qwen/presets/tiny-*.json).
# qwen2: q/k/v bias, GQA 4 heads / 2 KV heads, head_dim 32.
# qwen3: q/k norm, no bias, head_dim 64 != hidden/heads = 32.
TINY_SHAPES = {"qwen2": _shape("tiny-qwen2"), "qwen3": _shape("tiny-qwen3")}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "import sys\nfor line in sys.stdin:\n    print(int(line) * 2)\n",
    "assert add(1, 2) == 3\n",
    "The quick brown fox jumps over the lazy dog.",
    "Write a Python function that reverses a string.",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "Input: 3 4\nOutput: 7\n",
]


def make_tiny_tokenizer(out_dir: pathlib.Path, vocab_size: int = 400):
    """Train a byte-level BPE on a small code corpus and save it as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_hf_config(family: str = "qwen2", tie: bool = False, **overrides):
    """A transformers Qwen2Config / Qwen3Config of the tiny shape."""
    import transformers

    fields = dict(TINY_SHAPES[family])
    fields.pop("architectures")
    fields.pop("model_type")
    fields.update(tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                  initializer_range=0.1)
    fields.update(overrides)
    cls = transformers.Qwen2Config if family == "qwen2" else transformers.Qwen3Config
    cfg = cls(**fields)
    cfg.architectures = list(TINY_SHAPES[family]["architectures"])
    return cfg


def make_tiny_hf_model(family: str = "qwen2", tie: bool = False, seed: int = 0, **overrides):
    """A random tiny transformers model (float32, eval mode); biases are randomised too."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_hf_config(family, tie, **overrides)
    cls = transformers.Qwen2ForCausalLM if family == "qwen2" else transformers.Qwen3ForCausalLM
    model = cls(cfg).to(torch.float32).eval()
    # HF initialises biases and norm scales to constants; randomise them so the test sees them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def make_tiny_hf_dir(tmp_path, family: str = "qwen2", tie: bool = False, seed: int = 0,
                     tokenizer: bool = True, name: str | None = None, **overrides) -> pathlib.Path:
    """Save a random tiny Qwen model (+ tiny tokenizer) to tmp_path/<name> and return the dir."""
    out = pathlib.Path(tmp_path) / (name or f"tiny-{family}-{'tied' if tie else 'untied'}-{seed}")
    out.mkdir(parents=True, exist_ok=True)
    model = make_tiny_hf_model(family, tie, seed, **overrides)
    model.save_pretrained(str(out), safe_serialization=True)
    if tokenizer:
        make_tiny_tokenizer(out)
    return out
