"""Reference logits from transformers, for `cure-convert verify` (the torch side of the check).

Run as ``python -m rollout.hf_reference HF_DIR OUT.npz N``: loads the model in float32, builds N
right-padded prompts (the model's tokenizer when it has one, else seeded random ids) and saves
``tokens``, ``mask`` and ``logits`` to OUT.npz. The learner calls it in a subprocess, so
`cure_jax` never imports torch.
"""
from __future__ import annotations

import sys

import numpy as np

PROMPTS = ("def add(a, b):\n    return a + b", "Write a function that reverses a string.",
           "import sys\nprint(sum(map(int, sys.stdin.read().split())))", "assert f(3) == 9",
           "class Stack:", "The quick brown fox")


def reference_logits(hf_dir: str, n: int) -> dict[str, np.ndarray]:
    """Right-padded tokens, their mask and transformers' float32 logits for n prompts."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    texts = (list(PROMPTS) * (n // len(PROMPTS) + 1))[:n]
    try:
        tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
        ids = [tok(t)["input_ids"][:64] or [0] for t in texts]
    except Exception:  # no tokenizer files: random ids exercise the same weights
        rng = np.random.default_rng(0)
        ids = [list(rng.integers(0, model.config.vocab_size, 8 + 5 * i)) for i in range(n)]
    length = max(len(x) for x in ids)
    tokens = np.zeros((n, length), np.int64)
    mask = np.zeros((n, length), np.int64)
    for i, x in enumerate(ids):
        tokens[i, :len(x)] = x
        mask[i, :len(x)] = 1
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    return {"tokens": tokens, "mask": mask, "logits": logits.float().numpy()}


def main(argv: list[str]) -> None:
    hf_dir, out_path, n = argv[1], argv[2], int(argv[3])
    np.savez(out_path, **reference_logits(hf_dir, n))


if __name__ == "__main__":
    main(sys.argv)
