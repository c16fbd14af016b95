"""Code and unit-test prompts from Jinja templates shipped with the package (or the user's own).

A template renders the *instruction* for one problem (variables: ``question``, and in the
test template ``example``: ``{"input", "output"}`` or None). The instruction then becomes the
prompt either through the tokenizer's chat template (one user message, optional system
message, generation prompt appended) or through a raw string template (variables ``content``
and ``system``). Mode "auto" uses the chat template when the tokenizer has one.

Training shows one public example in the test prompt; evaluation shows none
(``PromptConfig.show_example_in_test_prompt`` or the per-call ``show_example`` override).
The answer formats (a final ```python block; ``**Test Input:**`` / ``**Test Output:**`` /
``**Explanation:**``) are what :mod:`rollout.parsing` reads.
"""
from __future__ import annotations

import functools
import pathlib
from typing import Any, Protocol

import jinja2

from rollout.contract.sections import PromptConfig

__all__ = [
    "STOP_STRINGS",
    "TEMPLATE_DIR",
    "PromptBuilder",
    "PromptConfig",
    "has_chat_template",
]

TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent / "templates"
DEFAULT_CODE_TEMPLATE = TEMPLATE_DIR / "code_prompt.jinja"
DEFAULT_TEST_TEMPLATE = TEMPLATE_DIR / "test_prompt.jinja"
DEFAULT_RAW_TEMPLATE = TEMPLATE_DIR / "raw_prompt.jinja"

# Generation stops at any of these (reference/cure.md).
STOP_STRINGS: tuple[str, ...] = ("</answer>", "User:", "Human:", "Assistant:", "<|im_end|>", "<|endoftext|>")


class ChatTokenizer(Protocol):
    def apply_chat_template(self, messages: list[dict], **kwargs: Any) -> Any: ...


class _ProblemLike(Protocol):  # rollout.problems.Problem satisfies this
    question: str
    example_input: tuple[str, ...]
    example_output: tuple[str, ...]


def has_chat_template(tokenizer: object | None) -> bool:
    """True when ``tokenizer`` can render chat messages: it has ``apply_chat_template`` and,
    if it exposes ``chat_template`` (Hugging Face tokenizers do), that is set."""
    if tokenizer is None or not callable(getattr(tokenizer, "apply_chat_template", None)):
        return False
    return getattr(tokenizer, "chat_template", "unset") is not None


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime: float) -> jinja2.Template:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False
    )
    try:
        return env.from_string(pathlib.Path(path).read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{path}:{e.lineno}: Jinja syntax error: {e.message}") from None


def _template(path: str | pathlib.Path | None, default: pathlib.Path) -> tuple[jinja2.Template, str]:
    p = pathlib.Path(path) if path is not None else default
    try:
        return _load(str(p), p.stat().st_mtime), str(p)
    except FileNotFoundError:
        raise ValueError(f"template file not found: {p}") from None


def _render(tpl: jinja2.Template, where: str, **kw: Any) -> str:
    try:
        return tpl.render(**kw).strip() + "\n"
    except jinja2.UndefinedError as e:
        raise ValueError(f"{where}: template uses an unknown variable: {e.message}") from None


class PromptBuilder:
    """Renders code and unit-test prompts for problems according to a :class:`PromptConfig`."""

    def __init__(self, config: PromptConfig = PromptConfig(), tokenizer: ChatTokenizer | None = None):
        self.config = config
        self.tokenizer = tokenizer
        if config.mode == "chat" and not has_chat_template(tokenizer):
            raise ValueError(
                "PromptConfig.mode: 'chat' needs a tokenizer with a chat template "
                "(apply_chat_template and chat_template set); use mode='raw' or 'auto'"
            )
        # Load (and syntax-check) every template now, so a bad file fails at start-up.
        self._code = _template(config.code_template, DEFAULT_CODE_TEMPLATE)
        self._test = _template(config.test_template, DEFAULT_TEST_TEMPLATE)
        self._raw = _template(config.raw_template, DEFAULT_RAW_TEMPLATE)

    @property
    def uses_chat(self) -> bool:
        return self.config.mode == "chat" or (self.config.mode == "auto" and has_chat_template(self.tokenizer))

    def code_instruction(self, problem: _ProblemLike) -> str:
        """The code instruction text (before any chat/raw wrapping)."""
        tpl, where = self._code
        return _render(tpl, where, question=problem.question.strip())

    def test_instruction(self, problem: _ProblemLike, show_example: bool | None = None) -> str:
        """The unit-test instruction text; shows the first public example when asked and present."""
        show = self.config.show_example_in_test_prompt if show_example is None else show_example
        example = None
        if show and problem.example_input and problem.example_output:
            example = {
                "input": problem.example_input[0].strip("\n"),
                "output": problem.example_output[0].strip("\n"),
            }
        tpl, where = self._test
        return _render(tpl, where, question=problem.question.strip(), example=example)

    def messages(self, instruction: str) -> list[dict[str, str]]:
        """The chat messages for an instruction (optional system message, then the user turn);
        what a chat template or an OpenAI-compatible chat endpoint receives."""
        system = self.config.system_prompt
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": instruction}
        ]

    def wrap(self, instruction: str) -> str:
        """Turn an instruction into the model's prompt (chat template or raw template)."""
        system = self.config.system_prompt
        if self.uses_chat:
            messages = self.messages(instruction)
            out = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if not isinstance(out, str):
                raise ValueError(
                    f"tokenizer.apply_chat_template returned {type(out).__name__}, expected str with tokenize=False"
                )
            return out
        tpl, where = self._raw
        try:
            return tpl.render(content=instruction.rstrip("\n"), system=system or "")
        except jinja2.UndefinedError as e:
            raise ValueError(f"{where}: template uses an unknown variable: {e.message}") from None

    def code_prompt(self, problem: _ProblemLike) -> str:
        """The full code prompt for ``problem``."""
        return self.wrap(self.code_instruction(problem))

    def test_prompt(self, problem: _ProblemLike, show_example: bool | None = None) -> str:
        """The full unit-test prompt for ``problem``."""
        return self.wrap(self.test_instruction(problem, show_example))
