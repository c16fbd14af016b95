"""Turn model responses into code and unit tests, or an explicit "unparsed" verdict.

Code: the last fenced block tagged as Python (```python, ```py, ```python3); when the response
has no Python-tagged block, the last fenced block with no language tag. Fences follow Markdown:
an opening line of three or more backticks (up to three spaces of indent) with an optional info
string, closed by a line of at least as many backticks and nothing else. A backtick run in the
middle of a line never opens or closes a block, so nested fences (a longer outer fence around
a shorter inner one) and code that mentions ``` inside strings parse as a person would read them.

Unit test: the last ``**Test Input:**`` marker that is followed by a ``**Test Output:**``
marker. Each section's value is its first fenced block; without a fence it falls back to the
plain text of the section (the output section ends at ``**Explanation:**`` or at the next test
marker). Values are normalised: a leading language-tag line such as ``plaintext`` is dropped,
literal backslash-n sequences become newlines when the value has no real line break, and the
value ends with exactly one newline.

Nothing here returns a placeholder string: every failure is a :class:`ParsedCode` or
:class:`ParsedTest` with ``ok == False`` and a ``reason``. How unparsed responses enter the
execution matrix and the rewards is one rule, :func:`rollout.rewards.mask_unparsed`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "PYTHON_TAGS",
    "ParsedCode",
    "ParsedTest",
    "normalize_newlines",
    "parse_code",
    "parse_test",
]

PYTHON_TAGS = frozenset({"python", "py", "python3", "py3"})
# Info strings treated as "no language given" for test values (dropped when they lead a value).
_PLAIN_TAGS = frozenset({"plaintext", "text", "txt", "plain", "input", "output", "stdin", "stdout"})

_OPEN_RE = re.compile(r"^ {0,3}(`{3,})([^`]*)$")
# A marker starts a line (after optional "#", "-", ">" or "*" decoration) or is set in bold, and
# ends with a colon: "**Test Input:**", "**Test Input**:", "### Test Input:", "Test Input:".
def _marker(words: str) -> re.Pattern[str]:
    return re.compile(
        rf"(?:^[ \t#>*-]*|\*\*[ \t]*){words}[ \t]*(?:\*\*[ \t]*)?:(?:[ \t]*\*\*)?",
        re.IGNORECASE | re.MULTILINE,
    )


_INPUT_MARK = _marker(r"Test[ \t]+Input")
_OUTPUT_MARK = _marker(r"Test[ \t]+Output")
_EXPLAIN_MARK = _marker(r"Explanation")


@dataclass(frozen=True)
class ParsedCode:
    """A code response: ``code`` is the program text, or None with a ``reason`` when unparsed."""

    code: str | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.code is not None


@dataclass(frozen=True)
class ParsedTest:
    """A unit-test response: stdin ``input`` and expected stdout ``output``, or both None with a
    ``reason`` when unparsed."""

    input: str | None
    output: str | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.input is not None and self.output is not None


@dataclass(frozen=True)
class _Block:
    lang: str  # first word of the info string, lower-cased ("" when none)
    body: str
    start: int  # offsets of the whole block (fences included) in the normalised text
    end: int


def normalize_newlines(text: str) -> str:
    """Windows (CRLF) and old-Mac (CR) line ends become LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _fenced_blocks(text: str, *, close_at_end: bool = False) -> tuple[list[_Block], bool]:
    """All closed fenced blocks of ``text`` (LF line ends), and whether a fence was left open.

    With ``close_at_end`` a fence still open at the end of ``text`` is closed there (used inside
    the body of an enclosing block, whose end also ends anything opened in it).
    """
    blocks: list[_Block] = []
    pos = 0
    open_fence: str | None = None
    lang = ""
    body_start = block_start = 0
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        if open_fence is None:
            m = _OPEN_RE.match(stripped)
            if m:
                open_fence = m.group(1)
                info = m.group(2).strip().split()
                lang = info[0].lower() if info else ""
                block_start, body_start = pos, pos + len(line)
        else:
            s = stripped.strip()
            if len(s) >= len(open_fence) and set(s) == {"`"}:
                blocks.append(_Block(lang, text[body_start:pos], block_start, pos + len(line)))
                open_fence = None
        pos += len(line)
    if open_fence is not None and close_at_end:
        blocks.append(_Block(lang, text[body_start:], block_start, len(text)))
        open_fence = None
    return blocks, open_fence is not None


def _nested_python(blocks: list[_Block]) -> list[_Block]:
    """Python-tagged blocks found inside the bodies of non-Python blocks, in document order."""
    found: list[_Block] = []
    for b in blocks:
        if b.lang in PYTHON_TAGS:
            continue
        inner, _ = _fenced_blocks(b.body, close_at_end=True)
        found.extend(x for x in inner if x.lang in PYTHON_TAGS)
        found.extend(_nested_python(inner))
    return found


def parse_code(response: str) -> ParsedCode:
    """The program in ``response``: last Python-tagged fenced block, else last untagged one.

    Order of preference: the last top-level Python-tagged block; else the last Python-tagged
    block nested in another block (a response that wraps its answer in a ```markdown block);
    else the last top-level block with no language tag.

    Reasons when unparsed: ``"no_code_block"`` (no usable block; ``"unclosed_code_block"`` when
    the only candidate fence is never closed, as in a truncated response) and
    ``"empty_code_block"``.
    """
    blocks, unclosed = _fenced_blocks(normalize_newlines(response))
    tagged = [b for b in blocks if b.lang in PYTHON_TAGS] or _nested_python(blocks)
    untagged = [b for b in blocks if b.lang == ""]
    chosen = tagged[-1] if tagged else (untagged[-1] if untagged else None)
    if chosen is None:
        return ParsedCode(None, "unclosed_code_block" if unclosed else "no_code_block")
    if not chosen.body.strip():
        return ParsedCode(None, "empty_code_block")
    return ParsedCode(chosen.body if chosen.body.endswith("\n") else chosen.body + "\n")


def _normalize_value(value: str, *, fenced: bool) -> str | None:
    lines = value.split("\n")
    if not fenced:
        # Plain-text fallback: drop blank lines around the value and a leading bare tag line.
        while lines and not lines[0].strip():
            lines.pop(0)
        if lines and lines[0].strip().lower() in _PLAIN_TAGS:
            lines.pop(0)
        lines = [ln for ln in lines if set(ln.strip()) != {"`"}]  # stray fence lines
    value = "\n".join(lines).strip("\n")
    if "\n" not in value and "\\n" in value:
        value = value.replace("\\n", "\n").strip("\n")
    if not value.strip() and not fenced:
        return None
    return value + "\n"


def _section_value(section: str) -> tuple[str | None, str | None]:
    """(value, reason): the first fenced block of ``section``, else its plain text."""
    blocks, unclosed = _fenced_blocks(section)
    if blocks:
        return _normalize_value(blocks[0].body, fenced=True), None
    if unclosed:
        return None, "unclosed_fence"
    value = _normalize_value(section.lstrip(" \t"), fenced=False)
    return (value, None) if value is not None else (None, "empty")


def parse_test(response: str) -> ParsedTest:
    """The unit test in ``response``: the last Test Input / Test Output marker pair.

    Reasons when unparsed: ``"no_test_input"``, ``"no_test_output"`` (markers missing),
    ``"empty_input"``/``"empty_output"`` (nothing after a marker), ``"unclosed_input_fence"``/
    ``"unclosed_output_fence"`` (a fence opened and never closed, as in a truncated response).
    """
    text = normalize_newlines(response)
    inputs = list(_INPUT_MARK.finditer(text))
    if not inputs:
        return ParsedTest(None, None, "no_test_input")
    outputs = list(_OUTPUT_MARK.finditer(text))
    # The last output marker that comes after some input marker, paired with the closest such input.
    out_m = next((o for o in reversed(outputs) if o.start() >= inputs[0].end()), None)
    if out_m is None:
        return ParsedTest(None, None, "no_test_output")
    in_m = [i for i in inputs if i.end() <= out_m.start()][-1]

    in_section = text[in_m.end() : out_m.start()]
    rest = text[out_m.end() :]
    # The output section ends at the first Explanation or Test Input marker outside a fence.
    blocks, _ = _fenced_blocks(rest)
    cut = len(rest)
    for pattern in (_EXPLAIN_MARK, _INPUT_MARK):
        for m in pattern.finditer(rest):
            if not any(b.start <= m.start() < b.end for b in blocks):
                cut = min(cut, m.start())
                break
    out_section = rest[:cut]

    for name, section in (("input", in_section), ("output", out_section)):
        value, why = _section_value(section)
        if value is None:
            reason = f"empty_{name}" if why == "empty" else f"unclosed_{name}_fence"
            return ParsedTest(None, None, reason)
        if name == "input":
            inp = value
    return ParsedTest(inp, value)
