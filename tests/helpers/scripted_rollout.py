"""Shared pieces of the rollout tests that run known programs and tests through the real
sandbox: the sample texts (for the embedded sum_of_list problem), a scripted engine (a stand-in
for the *model* only) and a module-scoped sandbox fixture.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from rollout.engines.base import Sample

# Codes for sum_of_list (first line n, second line the numbers).
CORRECT = "```python\nn = int(input())\nprint(sum(map(int, input().split())))\n```"
CORRECT2 = "```python\nimport sys\nd = sys.stdin.read().split()\nprint(sum(int(x) for x in d[1:]))\n```"
OFF_BY_ONE = "```python\nn = int(input())\nprint(sum(map(int, input().split())) + 1)\n```"
NO_CODE = "I am not sure how to solve this."
NO_CODE_LONG = "I am not sure how to solve this, let me think about it for a very long time"
# Tests for it.
GOOD = "**Test Input:**\n```\n3\n1 2 3\n```\n**Test Output:**\n```\n6\n```\n**Explanation:** sum"
GOOD2 = "**Test Input:**\n```\n2\n5 -1\n```\n**Test Output:**\n```\n4\n```\n**Explanation:** ok"
BAD = "**Test Input:**\n```\n2\n1 1\n```\n**Test Output:**\n```\n3\n```\n**Explanation:** wrong"
NO_TEST = "The answer depends on the input."
CODES = [CORRECT, CORRECT2, OFF_BY_ONE, NO_CODE]
TESTS = [GOOD, GOOD2, BAD, NO_TEST]

CODE_FENCE = "```python"  # in the raw/chat code prompts, not in the test prompts
TEST_HEADER = "**Test Input:**"  # in every test prompt (the reference's code prompt has no fence)


class ScriptedEngine:
    """Fixed responses decided by the prompt alone: byte tokens, one log-prob per token.

    The prompt's kind: a test prompt if ``test_marker`` is given and in it, else a code prompt
    if ``"```python"`` is in it (the default). Responses of a kind: without ``scripts``, the
    first n of ``codes`` / ``tests``; with ``scripts`` ({variant: (code picks, test picks)}),
    the picked indices into ``codes`` / ``tests`` for a prompt holding "Variant i.", and for
    other prompts indices drawn by a hash of the prompt (``hash_unscripted``) or an error.

    ``exact_n``: exactly n responses or an error. ``logprobs_when_asked``: log-probs only when
    the sampling config asks for them (else always). Texts in ``truncated`` finish by
    "length". ``calls`` records (prompts, n, sampling) per generate call, ``requests``
    (kind, n, sampling) per prompt and ``prompts`` every prompt. A weight push is an error.
    """

    tokenizer = None
    weights_version = 0

    def __init__(self, codes=(), tests=(), *, scripts=None, hash_unscripted=False,
                 test_marker=None, exact_n=True, logprob=-0.5, logprobs_when_asked=False,
                 truncated=()):
        self.texts = {"code": list(codes), "test": list(tests)}
        self.scripts, self.hash_unscripted = scripts, hash_unscripted
        self.test_marker, self.exact_n = test_marker, exact_n
        self.logprob, self.logprobs_when_asked = logprob, logprobs_when_asked
        self.truncated = frozenset(truncated)
        self.calls: list[tuple[int, int, object]] = []
        self.requests: list[tuple[str, int, object]] = []
        self.prompts: list[str] = []

    def kind(self, prompt: str) -> str:
        if self.test_marker is not None:
            return "test" if self.test_marker in prompt else "code"
        return "code" if CODE_FENCE in prompt else "test"

    def _texts(self, prompt: str, kind: str, n: int) -> list[str]:
        pool = self.texts[kind]
        if self.scripts is None:
            return pool[:n]
        v = next((i for i in self.scripts if f"Variant {i}." in prompt), None)
        if v is not None:
            picks = self.scripts[v][0 if kind == "code" else 1][:n]
        elif self.hash_unscripted:
            picks = np.random.default_rng(zlib.crc32(prompt.encode())).integers(0, len(pool), n)
        else:
            raise AssertionError(f"no script for the prompt {prompt!r}")
        return [pool[j] for j in picks]

    def generate(self, prompts, n, sampling):
        self.calls.append((len(prompts), n, sampling))
        self.prompts += prompts
        out = []
        for p in prompts:
            kind = self.kind(p)
            assert self.texts[kind], f"this engine was asked for {kind}s"
            self.requests.append((kind, n, sampling))
            texts = self._texts(p, kind, n)
            if self.exact_n:
                assert len(texts) == n
            with_lp = not self.logprobs_when_asked or sampling.logprobs
            ids = list(p.encode())
            out.append([Sample(list(t.encode()), t,
                               np.full(len(t.encode()), self.logprob, np.float32) if with_lp
                               else None,
                               "length" if t in self.truncated else "stop", ids)
                        for t in texts])
        return out

    def load_weights(self, named_tensors):
        raise AssertionError("weights were pushed into this engine")

    def close(self):
        pass


def sandbox_fixture():
    """A module-scoped fixture of the real sandbox (2 workers, 2 s): ``sandbox = sandbox_fixture()``."""

    @pytest.fixture(scope="module")
    def sandbox():
        from sandbox import Limits, Sandbox

        with Sandbox(workers=2, limits=Limits(time_s=2.0)) as sb:
            yield sb

    return sandbox
