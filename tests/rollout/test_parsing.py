"""Parsing code and unit tests out of realistic and malformed model responses."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.parsing import ParsedCode, ParsedTest, parse_code, parse_test

# ------------------------------------------------------------------------------ code corpus

CODE_CASES = [
    # (name, response, expected code or None, expected reason)
    ("plain python block",
     "I'll read n and sum.\n\n```python\nn = int(input())\nprint(n * 2)\n```\n",
     "n = int(input())\nprint(n * 2)\n", None),
    ("several blocks: last python wins",
     "First try:\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\nDone.",
     "print(2)\n", None),
    ("python tag beats a later untagged block (sample output)",
     "```python\nprint(input())\n```\nFor input 3 it prints:\n```\n3\n```\n",
     "print(input())\n", None),
    ("untagged block when no language is given",
     "Here:\n```\nprint('x')\n```",
     "print('x')\n", None),
    ("other languages ignored",
     "```bash\npython sol.py\n```\n```cpp\nint main(){}\n```\n```py\nprint(3)\n```\n",
     "print(3)\n", None),
    ("info string with attributes, upper case tag",
     "```Python title=sol.py\nprint(4)\n```", "print(4)\n", None),
    ("nested: longer outer fence around the answer",
     "````markdown\nAnswer:\n```python\nprint(5)\n```\n````\n", "print(5)\n", None),
    ("nested: a markdown block wrapping a python block with equal fences",
     "```markdown\n```python\nprint(6)\n```\n```\n", "print(6)\n", None),
    ("backticks inside the program do not close the block",
     "```python\ns = '```'\nprint(s + '``` x')\n```\n", "s = '```'\nprint(s + '``` x')\n", None),
    ("windows newlines",
     "Code:\r\n```python\r\nx = input()\r\nprint(x)\r\n```\r\n", "x = input()\nprint(x)\n", None),
    ("closing fence longer than opening, indented fence",
     "  ```python\nprint(7)\n  `````\n", "print(7)\n", None),
    ("no block at all",
     "The answer is to print the sum of the numbers.", None, "no_code_block"),
    ("truncated: the block never closes",
     "Let me write it.\n```python\nn = int(input())\nfor i in range(n):\n", None, "unclosed_code_block"),
    ("empty block", "```python\n\n```", None, "empty_code_block"),
    ("only a non-python block", "```json\n{\"a\": 1}\n```", None, "no_code_block"),
    ("inline triple backticks are not fences",
     "Use ```python print(1)``` style.", None, "no_code_block"),
]


@pytest.mark.parametrize("name,response,code,reason", CODE_CASES, ids=[c[0] for c in CODE_CASES])
def test_parse_code_corpus(name, response, code, reason):
    got = parse_code(response)
    assert isinstance(got, ParsedCode)
    assert got.code == code
    assert got.reason == reason
    assert got.ok is (code is not None)


# ------------------------------------------------------------------------------ test corpus

FULL = """Let me think about edge cases. A single element is a good boundary.

**Test Input:**
```
1
7
```

**Test Output:**
```
7
```

**Explanation:**
With one number the sum is that number.
"""

TEST_CASES = [
    ("canonical", FULL, "1\n7\n", "7\n", None),
    ("windows newlines", FULL.replace("\n", "\r\n"), "1\n7\n", "7\n", None),
    ("plaintext tags dropped",
     "**Test Input:**\n```plaintext\n3\n1 2 3\n```\n**Test Output:**\n```plaintext\n6\n```\n**Explanation:** sum",
     "3\n1 2 3\n", "6\n", None),
    ("last pair wins (example echoed first)",
     ("Example:\n**Test Input:**\n```\n5\n1 2 3 4 5\n```\n**Test Output:**\n```\n15\n```\n"
      "My test:\n**Test Input:**\n```\n2\n-1 1\n```\n**Test Output:**\n```\n0\n```\n**Explanation:**\nx"),
     "2\n-1 1\n", "0\n", None),
    ("plain text fallback, values on the marker line",
     "**Test Input:** 4\n**Test Output:** 16\n**Explanation:** 4 squared.",
     "4\n", "16\n", None),
    ("plain text fallback, multi-line values",
     "**Test Input:**\n2\n3 4\n\n**Test Output:**\n7\n\n**Explanation:**\nadd",
     "2\n3 4\n", "7\n", None),
    ("literal backslash-n becomes a newline",
     "**Test Input:**\n```\n3\\n1 2 3\\n\n```\n**Test Output:**\n```\n6\n```",
     "3\n1 2 3\n", "6\n", None),
    ("literal backslash-n in plain text",
     "**Test Input:** 2\\n5 5\n**Test Output:** 10\\n", "2\n5 5\n", "10\n", None),
    ("real newlines keep a literal backslash-n (string problems)",
     "**Test Input:**\n```\n2\na\\nb\n```\n**Test Output:**\n```\n3\n```",
     "2\na\\nb\n", "3\n", None),
    ("one trailing newline",
     "**Test Input:**\n```\n5\n\n\n```\n**Test Output:**\n```\n5   \n\n```",
     "5\n", "5   \n", None),
    ("marker variants: heading and colon outside bold",
     "### Test Input:\n```\n1\n```\n**Test Output**:\n```\n1\n```", "1\n", "1\n", None),
    ("prose mentions of 'test input' are not markers",
     FULL + "\nNote: this test input is small and the test output: obvious.\n", "1\n7\n", "7\n", None),
    ("explanation inside the output fence is kept",
     "**Test Input:**\n```\n1\n```\n**Test Output:**\n```\nExplanation: none\n```\n**Explanation:**\nok",
     "1\n", "Explanation: none\n", None),
    ("missing input marker", "**Test Output:**\n```\n1\n```", None, None, "no_test_input"),
    ("missing output marker", "**Test Input:**\n```\n1\n```\n**Explanation:** x", None, None, "no_test_output"),
    ("output marker only before the input", "**Test Output:** 3\n**Test Input:** 4\n", None, None, "no_test_output"),
    ("empty plain output", "**Test Input:**\n1\n**Test Output:**\n\n**Explanation:** nothing", None, None, "empty_output"),
    ("truncated output fence", "**Test Input:**\n```\n1\n```\n**Test Output:**\n```\n12", None, None, "unclosed_output_fence"),
    ("truncated input fence", "**Test Input:**\n```\n1\n2\n**Test Output:**\n", None, None, "unclosed_input_fence"),
    ("nothing at all", "I am not sure how to write a test.", None, None, "no_test_input"),
]


@pytest.mark.parametrize("name,response,inp,out,reason", TEST_CASES, ids=[c[0] for c in TEST_CASES])
def test_parse_test_corpus(name, response, inp, out, reason):
    got = parse_test(response)
    assert isinstance(got, ParsedTest)
    assert (got.input, got.output, got.reason) == (inp, out, reason)
    assert got.ok is (inp is not None)


def test_empty_fenced_output_is_an_explicit_empty_value():
    got = parse_test("**Test Input:**\n```\n0\n```\n**Test Output:**\n```\n```\n")
    assert got.ok and got.input == "0\n" and got.output == "\n"


_line = st.text(alphabet=st.characters(codec="ascii", exclude_characters="`*\r\n\\"), max_size=12)


@settings(max_examples=100, deadline=None)
@given(st.lists(_line, min_size=1, max_size=5), st.lists(_line, min_size=1, max_size=5), st.booleans())
def test_property_roundtrip_fenced(inp_lines, out_lines, crlf):
    inp = "\n".join(inp_lines).strip("\n")
    out = "\n".join(out_lines).strip("\n")
    response = f"Thinking...\n**Test Input:**\n```\n{inp}\n```\n**Test Output:**\n```\n{out}\n```\n**Explanation:**\nbecause"
    if crlf:
        response = response.replace("\n", "\r\n")
    got = parse_test(response)
    assert got.ok
    assert got.input == inp + "\n" and got.output == out + "\n"


@settings(max_examples=100, deadline=None)
@given(st.lists(_line, min_size=1, max_size=6))
def test_property_code_roundtrip(lines):
    body = "\n".join(lines)
    got = parse_code(f"Plan.\n```python\n{body}\n```\nThat's it.")
    if body.strip():
        assert got.code == body + "\n"
    else:
        assert got.reason == "empty_code_block"
