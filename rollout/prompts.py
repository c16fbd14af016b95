"""Code and unit-test prompts from Jinja templates shipped with the package (or the user's own).

A template renders the *instruction* for one problem (variables: ``question`` (stripped),
``raw_question`` (as in the data), ``evaluation`` (True for evaluation prompts), and in the
test template ``example``: the first public example ``{"input", "output"}`` (stripped of
newlines) or None, and ``examples``: every public example as given, [] when none is shown;
filter ``repr``: Python's repr). The instruction then becomes the prompt either through the
tokenizer's chat template (one user message, optional system message, generation prompt
appended) or through a raw string template (variables ``content`` and ``system``). Mode "auto"
uses the chat template when the tokenizer has one.

Mode "reference": the reference's own prompt format (``reference_code_prompt.jinja`` and
``reference_test_prompt.jinja``, verbatim from the authors' configs: a raw
``<|im_start|>...User: ...<|im_end|>\n<|im_start|>Assistant: `` string, all public examples
shown as Python reprs in training, none in evaluation, one more requirement sentence in the
evaluation's code prompt). The templates render the whole prompt, used as it is (not stripped,
not wrapped); an OpenAI-compatible endpoint gets it as the user message, as the reference sends
it, with :data:`REFERENCE_API_SYSTEM` as the system message unless ``system_prompt`` is set.

Training shows one public example in the test prompt; evaluation shows none
(``PromptConfig.show_example_in_test_prompt`` or the per-call ``show_example`` override).
The repair prompt of ``cure-eval``'s refinement rounds (rollout.refine) is a template too
(``repair_prompt.jinja``, wrapped like the others; mode "reference": ``reference_repair_prompt.jinja``,
the whole prompt in the reference's raw format), with ``code`` (the program to fix) and
``failures`` (the generated tests it fails: ``input``, ``expected``, ``output``, ``error``,
``verdict``); ``PromptConfig.repair_template`` replaces it.

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
    "REFERENCE_API_SYSTEM",
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
REFERENCE_CODE_TEMPLATE = TEMPLATE_DIR / "reference_code_prompt.jinja"
REFERENCE_TEST_TEMPLATE = TEMPLATE_DIR / "reference_test_prompt.jinja"
DEFAULT_REPAIR_TEMPLATE = TEMPLATE_DIR / "repair_prompt.jinja"
REFERENCE_REPAIR_TEMPLATE = TEMPLATE_DIR / "reference_repair_prompt.jinja"
# The system message the reference sends hosted models with its prompts (mode "reference").
REFERENCE_API_SYSTEM = "You are a helpful coding assistant."

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
    env.filters["repr"] = repr
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


def _render(tpl: jinja2.Template, where: str, exact: bool = False, **kw: Any) -> str:
    try:
        text = tpl.render(**kw)
        return text if exact else text.strip() + "\n"
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
        ref = config.mode == "reference"
        self._code = _template(config.code_template,
                               REFERENCE_CODE_TEMPLATE if ref else DEFAULT_CODE_TEMPLATE)
        self._test = _template(config.test_template,
                               REFERENCE_TEST_TEMPLATE if ref else DEFAULT_TEST_TEMPLATE)
        self._raw = _template(config.raw_template, DEFAULT_RAW_TEMPLATE)
        self._repair = _template(config.repair_template,
                                 REFERENCE_REPAIR_TEMPLATE if ref else DEFAULT_REPAIR_TEMPLATE)

    @property
    def uses_chat(self) -> bool:
        return self.config.mode == "chat" or (self.config.mode == "auto" and has_chat_template(self.tokenizer))

    @property
    def is_reference(self) -> bool:
        """Mode "reference": the templates render the whole prompt, used verbatim."""
        return self.config.mode == "reference"

    def code_instruction(self, problem: _ProblemLike, evaluation: bool = False) -> str:
        """The code instruction text (before any chat/raw wrapping; mode "reference": the
        whole prompt). ``evaluation``: an evaluation prompt (the templates' ``evaluation``)."""
        tpl, where = self._code
        return _render(tpl, where, self.is_reference, question=problem.question.strip(),
                       raw_question=problem.question, evaluation=evaluation)

    def test_instruction(self, problem: _ProblemLike, show_example: bool | None = None,
                         evaluation: bool = False) -> str:
        """The unit-test instruction text (mode "reference": the whole prompt); shows the
        public example(s) when asked and present."""
        show = self.config.show_example_in_test_prompt if show_example is None else show_example
        example, examples = None, []
        if show and problem.example_input and problem.example_output:
            example = {
                "input": problem.example_input[0].strip("\n"),
                "output": problem.example_output[0].strip("\n"),
            }
            examples = [{"input": i, "output": o}
                        for i, o in zip(problem.example_input, problem.example_output)]
        tpl, where = self._test
        return _render(tpl, where, self.is_reference, question=problem.question.strip(),
                       raw_question=problem.question, example=example, examples=examples,
                       evaluation=evaluation)

    def repair_instruction(self, problem: _ProblemLike, code: str,
                           failures: list[dict[str, str]]) -> str:
        """The repair instruction of a refinement round (mode "reference": the whole prompt):
        the problem, the picked program and the generated tests it fails (``failures``: dicts
        with ``input``, ``expected``, ``output``, ``error``, ``verdict``; rollout.refine)."""
        tpl, where = self._repair
        return _render(tpl, where, self.is_reference, question=problem.question.strip(),
                       raw_question=problem.question, code=code.rstrip("\n"),
                       failures=failures, evaluation=True)

    def messages(self, instruction: str) -> list[dict[str, str]]:
        """The chat messages for an instruction (optional system message, then the user turn);
        what a chat template or an OpenAI-compatible chat endpoint receives (mode
        "reference": the reference's API system message unless ``system_prompt`` is set)."""
        system = self.config.system_prompt or (REFERENCE_API_SYSTEM if self.is_reference else None)
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": instruction}
        ]

    def wrap(self, instruction: str) -> str:
        """Turn an instruction into the model's prompt (chat template or raw template; mode
        "reference": the instruction is the prompt already)."""
        if self.is_reference:
            return instruction
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

    def code_prompt(self, problem: _ProblemLike, evaluation: bool = False) -> str:
        """The full code prompt for ``problem``."""
        return self.wrap(self.code_instruction(problem, evaluation))

    def test_prompt(self, problem: _ProblemLike, show_example: bool | None = None,
                    evaluation: bool = False) -> str:
        """The full unit-test prompt for ``problem``."""
        return self.wrap(self.test_instruction(problem, show_example, evaluation))

    def repair_prompt(self, problem: _ProblemLike, code: str, failures: list[dict[str, str]]) -> str:
        """The full repair prompt (:meth:`repair_instruction`, wrapped)."""
        return self.wrap(self.repair_instruction(problem, code, failures))
