"""The supervised warm-start corpus, the project's tokenizer, and the corpus as token ids.

For every training task instance the corpus holds (prompt, response) documents rendered with the
project's own prompt templates (:class:`rollout.prompts.PromptBuilder`, raw mode: the tokenizer
has no chat template), so warm-start prompts are byte-identical to rollout prompts:

- code prompt + a correct program, and code prompt + plausible wrong programs (the generator's
  mutants: off-by-one, wrong operator, wrong builtin), in the answer format of
  :func:`rollout.parsing.parse_code`;
- test prompt (with or without the public example, as in training and evaluation) + a valid
  unit test, and + invalid ones (a wrong program's output), in the format of
  :func:`rollout.parsing.parse_test`;
- optionally (``repair_examples``, 0 by default) repair prompt (``cure-eval``'s refinement
  rounds: a wrong program and a test it fails, with its actual output) + the correct program.

Mixing right and wrong answers is deliberate: the warm-started policy knows the task formats and
solves some problems, and CURE's rewards have both correct and wrong samples to separate.

The tokenizer is a byte-level BPE trained here on the corpus text (``tokenizers``; digits are
single tokens so numbers copy from statement to program token by token), saved as the files
``PreTrainedTokenizerFast`` loads. Every step is seeded: same arguments -> same bytes.

    python -m rollout.warmstart_corpus --out=runs/warmstart/corpus

writes ``tokenizer/`` (tokenizer.json, tokenizer_config.json, special_tokens_map.json),
``corpus.npz`` (token ids; read by ``cure_jax.warmstart``) and ``corpus.jsonl`` (the texts).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import random
import sys

import numpy as np

from rollout.parsing import parse_code, parse_test
from rollout.prompts import PromptBuilder, PromptConfig
from rollout.tiny_tasks import TaskInstance, kind_by_name, task_instances
from rollout.tiny_tasks.run_trusted import run_trusted

__all__ = [
    "EOS_TOKEN",
    "CorpusConfig",
    "Document",
    "build_documents",
    "encode_documents",
    "load_tokenizer",
    "response_for_code",
    "response_for_test",
    "save_tokenizer",
    "train_tokenizer",
    "write_corpus",
]

EOS_TOKEN = "<|endoftext|>"
CODE, TEST = 0, 1
CODE_PREAMBLE = "I read the input, compute what the statement asks for and print it.\n"
TEST_EXPLANATION = "The output is what the statement asks for on this input.\n"


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """What goes into the corpus (counts are per training instance)."""

    seed: int = 0
    per_param: int = 4            # training instances per (kind, parameter)
    correct_codes: int = 1
    wrong_codes: int = 2
    valid_tests: int = 1
    invalid_tests: int = 1
    repair_examples: int = 0
    vocab_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("per_param", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"CorpusConfig.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("correct_codes", "wrong_codes", "valid_tests", "invalid_tests",
                     "repair_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"CorpusConfig.{name}: must be >= 0, got {getattr(self, name)}")
        if self.vocab_size < 300:
            raise ValueError(f"CorpusConfig.vocab_size: must be >= 300 (256 bytes + merges), "
                             f"got {self.vocab_size}")


@dataclasses.dataclass(frozen=True)
class Document:
    """One supervised example: the model reads ``prompt`` and learns to write ``response``."""

    prompt: str
    response: str
    kind: int        # CODE or TEST
    good: bool       # correct program / valid test
    task_id: str


def response_for_code(program: str) -> str:
    """A code answer in the format the parser reads (one short sentence, then the program)."""
    return f"\n{CODE_PREAMBLE}```python\n{program}```\n"


def response_for_test(test_input: str, test_output: str) -> str:
    """A unit-test answer in the fixed Test Input / Test Output / Explanation format."""
    return (f"\n**Test Input:**\n```\n{test_input}```\n\n**Test Output:**\n```\n{test_output}```"
            f"\n\n**Explanation:**\n{TEST_EXPLANATION}")


def _norm(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(text.split())


def _small_input(inst: TaskInstance, rng: random.Random) -> str:
    """The shortest of three fresh inputs: small tests are the ones a tiny model gets right."""
    kind = kind_by_name(inst.kind)
    return min((kind.gen_input(rng, inst.param) for _ in range(3)), key=len)


def _repair_document(inst: TaskInstance, builder: PromptBuilder,
                     rng: random.Random) -> list[Document]:
    """A repair prompt for one of the instance's wrong programs, shown a small test it fails
    (as rollout.refine shows it: the expected and the actual output), answered with the correct
    program; [] when no drawn input separates them."""
    for _attempt in range(20):
        program = rng.choice(inst.mutants)
        inp = _small_input(inst, rng)
        want, got = run_trusted(inst.solution, inp), run_trusted(program, inp)
        if want is None or got is None or _norm(got) == _norm(want):
            continue
        failure = {"input": inp.rstrip("\n"), "expected": want.rstrip("\n"),
                   "output": got.rstrip("\n"), "error": "", "verdict": "wrong answer"}
        prompt = builder.repair_prompt(inst.problem, program, [failure])
        return [Document(prompt, response_for_code(inst.solution), CODE, True,
                         inst.problem.task_id)]
    return []


def build_documents(instances: list[TaskInstance], cfg: CorpusConfig,
                    builder: PromptBuilder | None = None) -> list[Document]:
    """All documents for ``instances`` (seeded by ``cfg.seed``), in instance order."""
    builder = builder or PromptBuilder(PromptConfig(mode="raw"))
    rng = random.Random(f"corpus/{cfg.seed}")
    repair_rng = random.Random(f"corpus/{cfg.seed}/repair")  # the other documents stay as they were
    docs: list[Document] = []
    for inst in instances:
        p = inst.problem
        code_prompt = builder.code_prompt(p)
        for _ in range(cfg.correct_codes):
            docs.append(Document(code_prompt, response_for_code(inst.solution), CODE, True,
                                 p.task_id))
        # distinct wrong programs while there are enough, then repeats
        wrong = [inst.mutants[i % len(inst.mutants)]
                 for i in rng.sample(range(max(cfg.wrong_codes, len(inst.mutants))),
                                     cfg.wrong_codes)] if inst.mutants else []
        for program in wrong:
            docs.append(Document(code_prompt, response_for_code(program), CODE, False,
                                 p.task_id))
        for good, count in ((True, cfg.valid_tests), (False, cfg.invalid_tests)):
            for _ in range(count):
                test_prompt = builder.test_prompt(p, show_example=rng.random() < 0.5)
                for _attempt in range(20):
                    inp = _small_input(inst, rng)
                    out = run_trusted(inst.solution, inp)
                    if not good:  # a wrong program's answer: plausible but invalid
                        wrong = [run_trusted(m, inp) for m in inst.mutants]
                        wrong = [w for w in wrong if w is not None and _norm(w) != _norm(out)]
                        if not wrong:
                            continue
                        out = rng.choice(wrong)
                    docs.append(Document(test_prompt, response_for_test(inp, out), TEST, good,
                                         p.task_id))
                    break
        for _ in range(cfg.repair_examples if inst.mutants else 0):
            docs.extend(_repair_document(inst, builder, repair_rng))
    for d in docs:  # the corpus must be in the exact format the parsers read
        if d.kind == CODE:
            if not parse_code(d.response).ok:
                raise AssertionError(f"{d.task_id}: code response does not parse")
        elif not parse_test(d.response).ok:
            raise AssertionError(f"{d.task_id}: test response does not parse")
    return docs


# ------------------------------------------------------------------------------ tokenizer
def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (``tokenizers``) with single-digit tokens and ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def save_tokenizer(tok, out_dir: str | pathlib.Path) -> pathlib.Path:
    """Write the files ``transformers.PreTrainedTokenizerFast`` loads (no chat template:
    prompts are rendered with the raw template)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN, "bos_token": None, "unk_token": None,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 1024}, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN}, indent=2) + "\n")
    return out


def load_tokenizer(tok_dir: str | pathlib.Path):
    """The ``tokenizers.Tokenizer`` saved by :func:`save_tokenizer`."""
    from tokenizers import Tokenizer

    path = pathlib.Path(tok_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (run python -m rollout.warmstart_corpus)")
    return Tokenizer.from_file(str(path))


def encode_documents(tok, docs: list[Document]) -> dict[str, np.ndarray]:
    """Token ids of every document: prompt and response encoded separately (as at rollout,
    where the engine encodes the prompt and samples the response), response + EOS.

    Returns ``ids`` (int32, all documents concatenated), ``offsets`` (int64 [N+1]),
    ``prompt_len`` (int32 [N]), ``kind`` (int8 [N]) and ``good`` (int8 [N]).
    """
    eos = tok.token_to_id(EOS_TOKEN)
    prompts = tok.encode_batch([d.prompt for d in docs])
    responses = tok.encode_batch([d.response for d in docs])
    seqs = [p.ids + r.ids + [eos] for p, r in zip(prompts, responses)]
    offsets = np.zeros(len(seqs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    return {
        "ids": np.fromiter((t for s in seqs for t in s), np.int32, count=int(offsets[-1])),
        "offsets": offsets,
        "prompt_len": np.array([len(p.ids) for p in prompts], np.int32),
        "kind": np.array([d.kind for d in docs], np.int8),
        "good": np.array([d.good for d in docs], np.int8),
    }


def write_corpus(out_dir: str | pathlib.Path, cfg: CorpusConfig = CorpusConfig()) -> dict:
    """Build everything under ``out_dir``; returns a small summary (counts, lengths)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = build_documents(task_instances("train", per_param=cfg.per_param, seed=cfg.seed), cfg)
    tok = train_tokenizer([d.prompt + d.response for d in docs], cfg.vocab_size)
    save_tokenizer(tok, out / "tokenizer")
    arrays = encode_documents(tok, docs)
    np.savez(out / "corpus.npz", **arrays, vocab_size=np.int64(tok.get_vocab_size()),
             eos_id=np.int64(tok.token_to_id(EOS_TOKEN)))
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(dataclasses.asdict(d), ensure_ascii=False) + "\n")
    lengths = np.diff(arrays["offsets"])
    summary = {"documents": len(docs), "code": int((arrays["kind"] == CODE).sum()),
               "test": int((arrays["kind"] == TEST).sum()), "tokens": int(lengths.sum()),
               "max_len": int(lengths.max()), "mean_len": float(lengths.mean()),
               "vocab_size": tok.get_vocab_size(), "config": dataclasses.asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    for f in dataclasses.fields(CorpusConfig):
        ap.add_argument(f"--{f.name}", type=int, default=f.default)
    args = ap.parse_args(argv)
    cfg = CorpusConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CorpusConfig)})
    summary = write_corpus(args.out, cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
