"""Prompts: packaged templates, chat vs raw rendering, user templates, config validation; and
that a well-formed answer to our own prompt format parses."""
from __future__ import annotations

import pathlib

import pytest

from rollout import parsing, prompts
from rollout.problems import Problem

PROBLEM = Problem(
    task_id="toy/0",
    question="Given n and n integers, print their sum.\nInput: n on the first line, then n integers.",
    test_input=("3\n1 2 3\n",),
    test_output=("6\n",),
    example_input=("5\n1 2 3 4 5\n",),
    example_output=("15\n",),
)

QWEN_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A real Hugging Face fast tokenizer built in memory (no download) with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "sum": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    t.chat_template = QWEN_LIKE
    return t


def test_packaged_templates_exist_and_stop_strings():
    for name in ("code_prompt.jinja", "test_prompt.jinja", "raw_prompt.jinja"):
        assert (prompts.TEMPLATE_DIR / name).is_file()
    assert prompts.STOP_STRINGS == ("</answer>", "User:", "Human:", "Assistant:", "<|im_end|>", "<|endoftext|>")


def test_code_prompt_raw():
    b = prompts.PromptBuilder(prompts.PromptConfig(mode="raw"))
    p = b.code_prompt(PROBLEM)
    assert p.startswith("User: ") and p.endswith("\n\nAssistant:")
    assert PROBLEM.question in p
    assert "input()" in p and "print()" in p and "```python" in p
    assert not b.uses_chat


def test_test_prompt_example_shown_in_training_hidden_in_eval():
    train = prompts.PromptBuilder(prompts.PromptConfig(mode="raw"))
    evalb = prompts.PromptBuilder(prompts.PromptConfig(mode="raw", show_example_in_test_prompt=False))
    with_ex = train.test_prompt(PROBLEM)
    without = evalb.test_prompt(PROBLEM)
    for p in (with_ex, without):
        assert "**Test Input:**" in p and "**Test Output:**" in p and "**Explanation:**" in p
        assert PROBLEM.question in p
    assert "1 2 3 4 5" in with_ex and "15" in with_ex
    assert "1 2 3 4 5" not in without
    # The per-call override wins over the config.
    assert "1 2 3 4 5" not in train.test_prompt(PROBLEM, show_example=False)
    assert "1 2 3 4 5" in evalb.test_prompt(PROBLEM, show_example=True)
    # A problem without public examples renders without one.
    bare = Problem(task_id="t", question="Print 1.", test_input=("\n",), test_output=("1\n",))
    assert "An example test" not in train.test_prompt(bare)


def test_chat_mode_with_real_hf_tokenizer(hf_tokenizer):
    b = prompts.PromptBuilder(prompts.PromptConfig(mode="chat"), tokenizer=hf_tokenizer)
    p = b.code_prompt(PROBLEM)
    assert p.startswith("<|im_start|>user\n") and p.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert b.code_instruction(PROBLEM).strip() in p
    s = prompts.PromptBuilder(prompts.PromptConfig(mode="chat", system_prompt="Be exact."), tokenizer=hf_tokenizer)
    assert s.messages("hi") == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "hi"}]
    assert b.messages("hi") == [{"role": "user", "content": "hi"}]
    assert s.test_prompt(PROBLEM).startswith("<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\n")
    # auto picks chat when the tokenizer has a template, raw when it does not.
    assert prompts.PromptBuilder(tokenizer=hf_tokenizer).uses_chat
    hf_tokenizer.chat_template = None
    try:
        assert not prompts.has_chat_template(hf_tokenizer)
        assert prompts.PromptBuilder(tokenizer=hf_tokenizer).code_prompt(PROBLEM).startswith("User: ")
        with pytest.raises(ValueError, match="PromptConfig.mode: 'chat' needs a tokenizer"):
            prompts.PromptBuilder(prompts.PromptConfig(mode="chat"), tokenizer=hf_tokenizer)
    finally:
        hf_tokenizer.chat_template = QWEN_LIKE


def test_duck_typed_tokenizer():
    class Tok:
        def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
            assert tokenize is False and add_generation_prompt is True
            return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"

    p = prompts.PromptBuilder(prompts.PromptConfig(mode="chat"), tokenizer=Tok()).code_prompt(PROBLEM)
    assert p.startswith("user:Solve") and p.endswith("|assistant:")


def test_user_templates(tmp_path: pathlib.Path):
    code = tmp_path / "code.jinja"
    code.write_text("Q: {{ question }}\nA:")
    test = tmp_path / "test.jinja"
    test.write_text("{{ question }}{% if example %} e.g. {{ example.input }} -> {{ example.output }}{% endif %}")
    raw = tmp_path / "raw.jinja"
    raw.write_text("<s>{{ content }}</s>")
    b = prompts.PromptBuilder(prompts.PromptConfig(mode="raw", code_template=str(code), test_template=test, raw_template=raw))
    assert b.code_prompt(PROBLEM) == f"<s>Q: {PROBLEM.question}\nA:</s>"
    assert b.test_prompt(PROBLEM).endswith("e.g. 5\n1 2 3 4 5 -> 15</s>")


def test_config_errors(tmp_path: pathlib.Path):
    missing = tmp_path / "nope.jinja"
    with pytest.raises(ValueError, match=f"PromptConfig.code_template: template file not found: {missing}"):
        prompts.PromptConfig(code_template=missing)
    with pytest.raises(ValueError, match="PromptConfig.mode"):
        prompts.PromptConfig(mode="chatml")
    with pytest.raises(ValueError, match="show_example_in_test_prompt"):
        prompts.PromptConfig(show_example_in_test_prompt="no")
    bad = tmp_path / "bad.jinja"
    bad.write_text("line one\n{% if question %}never closed")
    with pytest.raises(ValueError, match=f"{bad}:2: Jinja syntax error"):
        prompts.PromptBuilder(prompts.PromptConfig(test_template=bad))
    unknown = tmp_path / "unknown.jinja"
    unknown.write_text("{{ problem_text }}")
    b = prompts.PromptBuilder(prompts.PromptConfig(mode="raw", code_template=unknown))
    with pytest.raises(ValueError, match=f"{unknown}: template uses an unknown variable"):
        b.code_prompt(PROBLEM)


def test_answer_in_the_requested_format_parses():
    """The formats our prompts ask for are exactly what the parsers read."""
    p = prompts.PromptBuilder(prompts.PromptConfig(mode="raw")).test_prompt(PROBLEM)
    fmt = p[p.rindex("**Test Input:**"):].split("\n\nAssistant:")[0]
    answer = fmt.replace("<the input>", "2\n4 5").replace("<the expected output>", "9")
    got = parsing.parse_test("I pick a small case.\n" + answer)
    assert (got.input, got.output) == ("2\n4 5\n", "9\n")
    # Without replacing the placeholders, parsing still works (it is the model's job to fill them).
    code = "Reasoning...\n```python\nn = int(input())\nprint(sum(map(int, input().split())))\n```"
    assert parsing.parse_code(code).ok
