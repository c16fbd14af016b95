"""Warm start: corpus format, the project's tokenizer, a short supervised run, the shipped policy."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from rollout.parsing import parse_code, parse_test
from rollout.prompts import PromptBuilder, PromptConfig
from rollout.tiny_tasks import task_instances, task_problems
from rollout.warmstart_corpus import (
    CODE,
    TEST,
    CorpusConfig,
    build_documents,
    encode_documents,
    save_tokenizer,
    train_tokenizer,
)

ASSET = pathlib.Path(__file__).resolve().parents[2] / "rollout" / "assets" / "tiny_coder"
KINDS = ("sum_plus", "repeat_word", "multiples")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A small corpus (3 kinds) tokenized with a freshly trained tokenizer, written to disk."""
    out = tmp_path_factory.mktemp("corpus")
    cfg = CorpusConfig(vocab_size=400)
    docs = build_documents(task_instances("train", per_param=1, kinds=KINDS), cfg)
    tok = train_tokenizer([d.prompt + d.response for d in docs], cfg.vocab_size)
    save_tokenizer(tok, out / "tokenizer")
    arrays = encode_documents(tok, docs)
    np.savez(out / "corpus.npz", **arrays, vocab_size=np.int64(tok.get_vocab_size()),
             eos_id=np.int64(tok.token_to_id("<|endoftext|>")))
    return out, docs, tok, arrays


def test_documents_use_the_rollout_prompts_and_answer_formats(small_corpus):
    _, docs, _, _ = small_corpus
    inst = task_instances("train", per_param=1, kinds=KINDS)[0]
    builder = PromptBuilder(PromptConfig(mode="raw"))
    mine = [d for d in docs if d.task_id == inst.problem.task_id]
    assert {d.prompt for d in mine if d.kind == CODE} == {builder.code_prompt(inst.problem)}
    test_prompts = {builder.test_prompt(inst.problem, show_example=s) for s in (True, False)}
    assert {d.prompt for d in mine if d.kind == TEST} <= test_prompts
    good_code = [d for d in mine if d.kind == CODE and d.good]
    bad_code = [d for d in mine if d.kind == CODE and not d.good]
    assert parse_code(good_code[0].response).code == inst.solution
    assert parse_code(bad_code[0].response).code in inst.mutants
    for d in mine:
        if d.kind == TEST:
            t = parse_test(d.response)
            assert t.ok
            ref = __import__("rollout.tiny_tasks.run_trusted", fromlist=["x"]).run_trusted(
                inst.solution, t.input)
            assert (ref.split() == t.output.split()) == d.good, d.response


def test_repair_examples_show_a_wrong_program_failing_and_answer_the_right_one(small_corpus):
    from rollout.tiny_tasks.run_trusted import run_trusted

    _, plain, _, _ = small_corpus
    instances = task_instances("train", per_param=1, kinds=KINDS)
    docs = build_documents(instances, CorpusConfig(vocab_size=400, repair_examples=1))
    repairs = [d for d in docs if d.prompt not in {x.prompt for x in plain}]
    assert [d for d in docs if d not in repairs] == plain  # off by default: the corpus is as before
    assert len(repairs) == sum(1 for i in instances if i.mutants)
    builder = PromptBuilder(PromptConfig(mode="raw"))
    for d, inst in zip(repairs, [i for i in instances if i.mutants]):
        assert d.kind == CODE and d.good and parse_code(d.response).code == inst.solution
        shown = [m for m in inst.mutants if f"```python\n{m.rstrip()}\n```" in d.prompt]
        assert len(shown) == 1, d.prompt
        inp = d.prompt.split("Input:\n```\n")[1].split("\n```")[0] + "\n"
        failure = {"input": inp.rstrip("\n"), "expected": run_trusted(inst.solution, inp).rstrip("\n"),
                   "output": run_trusted(shown[0], inp).rstrip("\n"), "error": "",
                   "verdict": "wrong answer"}
        assert failure["expected"] != failure["output"]
        assert d.prompt == builder.repair_prompt(inst.problem, shown[0], [failure])


def test_tokenizer_is_deterministic_and_matches_transformers(small_corpus):
    out, docs, tok, arrays = small_corpus
    again = train_tokenizer([d.prompt + d.response for d in docs], 400)
    assert again.to_str() == tok.to_str()
    transformers = pytest.importorskip("transformers", reason="transformers loads the tokenizer")
    hf = transformers.AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert hf.eos_token == "<|endoftext|>" and hf.chat_template is None
    d = docs[0]
    n_prompt = int(arrays["prompt_len"][0])
    assert hf(d.prompt)["input_ids"] == arrays["ids"][:n_prompt].tolist()
    assert hf.decode(hf(d.response)["input_ids"]) == d.response
    assert "12" not in tok.get_vocab() and "Ġ12" not in tok.get_vocab()  # digits stay single


def test_bad_corpus_fails_clearly(tmp_path):
    from cure_jax.warmstart import load_corpus

    with pytest.raises(FileNotFoundError, match="no corpus"):
        load_corpus(tmp_path)
    np.savez(tmp_path / "corpus.npz", ids=np.array([1, 2, 3], np.int32),
             offsets=np.array([0, 3]), prompt_len=np.array([3], np.int32),
             kind=np.array([0], np.int8), vocab_size=np.int64(10), eos_id=np.int64(0))
    with pytest.raises(ValueError, match="field 'prompt_len', document 0"):
        load_corpus(tmp_path)


@pytest.mark.slow
def test_short_warm_start_lowers_the_loss_and_saves_a_loadable_policy(small_corpus, tmp_path):
    from cure_jax.warmstart import WarmstartConfig, load_corpus, save_policy, train

    out, *_ = small_corpus
    corpus = load_corpus(out)
    cfg = WarmstartConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                          steps=24, batch_size=4, lr=3e-3, warmup_steps=4, log_every=4,
                          length_bucket=128)
    model, history = train(cfg, corpus, log=lambda s: None)
    # random init starts near log(vocab) ~ 6 nats; 24 steps must take off well over a nat
    assert history[0]["loss"] > 5.0, history
    assert history[-1]["loss"] < history[0]["loss"] - 1.5, history
    hf_dir = save_policy(model, tmp_path / "policy", out / "tokenizer")
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["head_dim"] == 32
    transformers = pytest.importorskip("transformers", reason="transformers loads the policy")
    torch = pytest.importorskip("torch", reason="transformers needs torch")
    m = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    ids = corpus.ids[: corpus.offsets[1]][None].astype(np.int64)
    import jax.numpy as jnp
    ours = np.asarray(model.logits(model(jnp.asarray(ids, jnp.int32))))
    theirs = m(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=2e-3)


def test_shipped_policy_is_a_small_qwen2_with_the_project_tokenizer():
    assert (ASSET / "model.safetensors").is_file(), f"{ASSET}: shipped checkpoint missing"
    config = json.loads((ASSET / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["head_dim"] >= 32
    assert (ASSET / "model.safetensors").stat().st_size < 8 * 2**20
    recipe = json.loads((ASSET / "warmstart.json").read_text())
    assert recipe["history"][-1]["loss"] < recipe["history"][0]["loss"]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (ASSET / name).is_file(), name


@pytest.mark.slow
def test_shipped_policy_solves_some_but_not_all_held_out_tasks():
    """Sampled at temperature 1 through the hf engine, judged by the sandbox."""
    pytest.importorskip("transformers", reason="the hf engine needs transformers")
    from rollout.tiny_tasks.measure import measure_policy

    problems = task_problems("eval")[::2]
    res = measure_policy(str(ASSET), problems, n=2, temperature=1.0, max_tokens=128, seed=0)
    assert res["code_parse_rate"] > 0.8, res
    assert 0.0 < res["code_accuracy"] < 1.0, res
    assert res["test_parse_rate"] > 0.5, res
    assert res["test_validity"] > 0.0, res


def test_default_config_starts_from_the_shipped_policy_on_the_task_splits():
    """configs/tiny.py (the README's first command) passes the driver's and the learner's
    validation, starting from the shipped tiny coder."""
    from cure_jax.config import load_config
    from tests.helpers.cure_runs import tiny_config

    config = tiny_config()
    cfg = load_config(config)
    assert pathlib.Path(config.model.hf_dir) == ASSET
    assert cfg.data.eval.endswith("eval.json") and cfg.data.train.endswith("train.json")
    assert cfg.model.qwen_config().head_dim >= 32
