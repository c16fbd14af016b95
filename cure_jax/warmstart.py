"""Supervised warm start of a tiny Qwen2 policy on the synthetic-task corpus.

Reads the corpus as token ids (``corpus.npz`` from ``python -m rollout.warmstart_corpus``: this
module never tokenizes, so the learner side needs neither torch nor transformers), trains with
the learner's cross-entropy (:func:`cure_jax.losses.cross_entropy_loss`, response tokens only)
and AdamW (:func:`cure_jax.optim.make_optimizer`), and writes a Hugging Face directory
(config.json, model.safetensors, the tokenizer files) that vLLM and transformers load.

    python -m cure_jax.warmstart --config=configs/warmstart.py --out=rollout/assets/tiny_coder

The corpus is first (re)built in ``--corpus`` (default ``runs/warmstart/corpus``) by running
``python -m rollout.warmstart_corpus`` in a subprocess (the package boundary holds);
``--reuse_corpus`` trains on an existing one.

Loss of one batch, with m the response mask (1 on response tokens and the final EOS):

    L = \\sum_{i,t} m_{it} (-\\log \\pi_\\theta(y_{it} | y_{i,<t})) / \\sum_{i,t} m_{it}
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cure_jax import hf_io, losses
from cure_jax.config import LearnerConfig
from cure_jax.models.qwen import Qwen, QwenConfig
from cure_jax.optim import make_optimizer

__all__ = [
    "Corpus",
    "WarmstartConfig",
    "batches",
    "load_corpus",
    "run",
    "save_policy",
    "train",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclasses.dataclass(frozen=True)
class WarmstartConfig:
    """The recipe (see configs/warmstart.py); validated at construction."""

    # model (Qwen2 architecture); vocab_size 0 = the tokenizer's, rounded up to 64
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    vocab_size: int = 0
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    # optimisation
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    length_bucket: int = 64
    seed: int = 0
    log_every: int = 20
    # corpus (rollout.warmstart_corpus.CorpusConfig fields, used when the corpus is built here)
    corpus_per_param: int = 4
    corpus_vocab_size: int = 1024
    corpus_repair_examples: int = 0  # repair prompts per instance (cure-eval's refinement)

    def __post_init__(self) -> None:
        positive = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "max_position_embeddings", "steps", "batch_size",
                    "length_bucket", "log_every", "corpus_per_param", "corpus_vocab_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"warmstart.{name}: must be >= 1, got {getattr(self, name)}")
        if self.head_dim < 32:
            raise ValueError(f"warmstart.head_dim: must be >= 32 (vLLM's CPU build), got "
                             f"{self.head_dim}")
        if self.vocab_size < 0:
            raise ValueError(f"warmstart.vocab_size: must be >= 0, got {self.vocab_size}")
        if not self.lr > 0:
            raise ValueError(f"warmstart.lr: must be > 0, got {self.lr}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmstart.warmup_steps: must be in [0, steps), got "
                             f"{self.warmup_steps}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"warmstart.final_lr_ratio: must be in [0, 1], got "
                             f"{self.final_lr_ratio}")

    @classmethod
    def from_mapping(cls, m: Any) -> WarmstartConfig:
        """From a dict / ConfigDict; an unknown field is a one-line error naming it."""
        d = dict(m.to_dict() if hasattr(m, "to_dict") else m)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"warmstart config: unknown field(s) {unknown}")
        return cls(**d)

    def model_config(self, tokenizer_vocab: int, eos_id: int) -> QwenConfig:
        vocab = self.vocab_size or -(-tokenizer_vocab // 64) * 64
        if vocab < tokenizer_vocab:
            raise ValueError(f"warmstart.vocab_size: {vocab} < the tokenizer's {tokenizer_vocab}")
        return QwenConfig(
            vocab_size=vocab, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
            family="qwen2", rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings, bos_token_id=eos_id,
            eos_token_id=eos_id, torch_dtype="float32", attention_impl="xla")

    def learner_config(self) -> LearnerConfig:
        """The optimizer settings in the learner's own config type (AdamW + warm-up + cosine)."""
        return LearnerConfig(lr=self.lr, lr_schedule="cosine", warmup_steps=self.warmup_steps,
                             decay_steps=self.steps - self.warmup_steps,
                             final_lr_ratio=self.final_lr_ratio, b1=0.9, b2=0.95,
                             weight_decay=self.weight_decay, grad_clip=self.grad_clip)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Token-id documents: document i is ``ids[offsets[i]:offsets[i+1]]``, of which the first
    ``prompt_len[i]`` tokens are the prompt and the rest the response (ending in EOS)."""

    ids: np.ndarray
    offsets: np.ndarray
    prompt_len: np.ndarray
    kind: np.ndarray
    vocab_size: int
    eos_id: int

    @property
    def num_docs(self) -> int:
        return len(self.prompt_len)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def load_corpus(path: str | pathlib.Path) -> Corpus:
    """Read ``corpus.npz`` (a file or the directory holding it) and check its structure."""
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / "corpus.npz"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no corpus (build one with python -m rollout.warmstart_corpus)")
    with np.load(p) as z:
        missing = [k for k in ("ids", "offsets", "prompt_len", "kind", "vocab_size", "eos_id")
                   if k not in z.files]
        if missing:
            raise ValueError(f"{p}: missing array {missing[0]!r}")
        c = Corpus(ids=z["ids"].astype(np.int32), offsets=z["offsets"].astype(np.int64),
                   prompt_len=z["prompt_len"].astype(np.int32), kind=z["kind"],
                   vocab_size=int(z["vocab_size"]), eos_id=int(z["eos_id"]))
    n = c.num_docs
    if c.offsets.shape != (n + 1,) or c.offsets[0] != 0 or c.offsets[-1] != len(c.ids):
        raise ValueError(f"{p}: field 'offsets' does not index 'ids' ({n} documents)")
    lengths = c.lengths()
    bad = np.nonzero((c.prompt_len < 1) | (c.prompt_len >= lengths))[0]
    if bad.size:
        raise ValueError(f"{p}: field 'prompt_len', document {bad[0]}: {c.prompt_len[bad[0]]} "
                         f"leaves no response in a document of {lengths[bad[0]]} tokens")
    if c.ids.size and (c.ids.min() < 0 or c.ids.max() >= c.vocab_size):
        raise ValueError(f"{p}: field 'ids' has token ids outside [0, {c.vocab_size})")
    return c


def batches(corpus: Corpus, batch_size: int, bucket: int, rng: np.random.Generator):
    """Endless shuffled batches: (tokens int32 [B, L], mask float32 [B, L]) with L the longest
    document of the batch rounded up to ``bucket`` (few distinct shapes -> few compilations).
    mask[i, t] = 1 when token t of row i is a response token (its loss is taken)."""
    lengths = corpus.lengths()
    while True:
        order = rng.permutation(corpus.num_docs)
        for s in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[s:s + batch_size]
            length = int(-(-lengths[rows].max() // bucket) * bucket)
            tokens = np.full((batch_size, length), corpus.eos_id, np.int32)
            mask = np.zeros((batch_size, length), np.float32)
            for r, d in enumerate(rows):
                lo, hi = corpus.offsets[d], corpus.offsets[d + 1]
                tokens[r, :hi - lo] = corpus.ids[lo:hi]
                mask[r, corpus.prompt_len[d]:hi - lo] = 1.0
            yield tokens, mask


def _make_step(graphdef, abstract_state, optimizer):
    def model_of(params):
        state = jax.tree.map(lambda x: x, abstract_state)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)

    def loss_fn(params, tokens, mask):
        model = model_of(params)
        logits = model.logits(model(tokens)[:, :-1])           # predicts tokens[:, 1:]
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                   tokens[:, 1:, None], axis=-1)[..., 0]
        return losses.cross_entropy_loss(logp, mask[:, 1:], "token-mean")

    @jax.jit
    def step(params, opt_state, tokens, mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    return step, jax.jit(loss_fn), model_of


def train(cfg: WarmstartConfig, corpus: Corpus, *, log=print) -> tuple[Qwen, list[dict]]:
    """Run ``cfg.steps`` AdamW steps; returns the trained model and the loss history."""
    model_cfg = cfg.model_config(corpus.vocab_size, corpus.eos_id)
    model = Qwen(model_cfg, rngs=nnx.Rngs(cfg.seed))
    graphdef, state = nnx.split(model)
    abstract_state = jax.tree.map(lambda x: x, state)
    params = state.to_pure_dict()
    optimizer = make_optimizer(cfg.learner_config())
    opt_state = optimizer.init(params)
    step_fn, _, model_of = _make_step(graphdef, abstract_state, optimizer)
    data = batches(corpus, cfg.batch_size, cfg.length_bucket, np.random.default_rng(cfg.seed))
    history: list[dict] = []
    t0 = time.perf_counter()
    window: list[float] = []
    for step in range(1, cfg.steps + 1):
        tokens, mask = next(data)
        params, opt_state, loss, gnorm = step_fn(params, opt_state, tokens, mask)
        window.append(float(loss))
        if step % cfg.log_every == 0 or step == cfg.steps:
            rec = {"step": step, "loss": float(np.mean(window)), "grad_norm": float(gnorm),
                   "elapsed_s": round(time.perf_counter() - t0, 1)}
            history.append(rec)
            window = []
            log(json.dumps(rec))
    return model_of(params), history


def save_policy(model: Qwen, out_dir: str | pathlib.Path, tokenizer_dir: str | pathlib.Path,
                extra: dict | None = None) -> pathlib.Path:
    """HF directory: config.json + model.safetensors (float32) + the tokenizer files."""
    out = hf_io.save_hf_dir(model, out_dir, dtype=np.float32)
    tok = pathlib.Path(tokenizer_dir)
    for name in TOKENIZER_FILES:
        if not (tok / name).is_file():
            raise FileNotFoundError(f"{tok / name}: tokenizer file missing")
        shutil.copyfile(tok / name, out / name)
    eos = model.cfg.eos_token_id
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}, indent=2) + "\n")
    if extra is not None:
        (out / "warmstart.json").write_text(json.dumps(extra, indent=2) + "\n")
    return out


def build_corpus(corpus_dir: pathlib.Path, cfg: WarmstartConfig) -> None:
    """Run the rollout-side corpus builder in a subprocess (it trains the tokenizer)."""
    cmd = [sys.executable, "-m", "rollout.warmstart_corpus", f"--out={corpus_dir}",
           f"--seed={cfg.seed}", f"--per_param={cfg.corpus_per_param}",
           f"--vocab_size={cfg.corpus_vocab_size}",
           f"--repair_examples={cfg.corpus_repair_examples}"]
    subprocess.run(cmd, check=True)


def run(cfg: WarmstartConfig, out_dir: str | pathlib.Path, corpus_dir: str | pathlib.Path,
        *, reuse_corpus: bool = False) -> dict:
    """Build (unless ``reuse_corpus``) and read the corpus, train, save the HF directory;
    returns the summary (also written to ``<out>/warmstart.json``)."""
    out = pathlib.Path(out_dir)
    if not reuse_corpus:
        build_corpus(pathlib.Path(corpus_dir), cfg)
    corpus = load_corpus(corpus_dir)
    t0 = time.perf_counter()
    model, history = train(cfg, corpus)
    summary = {"config": dataclasses.asdict(cfg), "documents": corpus.num_docs,
               "train_seconds": round(time.perf_counter() - t0, 1),
               "final_loss": history[-1]["loss"], "history": history}
    save_policy(model, out, pathlib.Path(corpus_dir) / "tokenizer", extra=summary)
    return summary


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    cfg = WarmstartConfig.from_mapping(flags.FLAGS.config)
    run(cfg, flags.FLAGS.out, flags.FLAGS.corpus, reuse_corpus=flags.FLAGS.reuse_corpus)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "configs/warmstart.py", "warm-start recipe")
    flags.DEFINE_string("out", "rollout/assets/tiny_coder", "output HF directory")
    flags.DEFINE_string("corpus", "runs/warmstart/corpus", "corpus directory (built here)")
    flags.DEFINE_bool("reuse_corpus", False, "train on the corpus already in --corpus")
    app.run(main)
