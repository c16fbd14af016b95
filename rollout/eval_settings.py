"""What ``cure-eval`` is asked to do, with the paper's defaults, and how it fails.

:class:`EvalSettings` (samples per problem, BoN pairs, batch sizes), the evaluation sampling
(:func:`eval_sampling`: a :class:`rollout.engines.base.SamplingConfig` with the paper's
temperature 0.8, top_p 0.95, top_k 40), the evaluation prompts (no public example in the test
prompt) and :class:`EvalError`, the one user-facing error type of the evaluation modules.
:class:`RefineSettings` configures the refinement rounds (rollout.refine). Kept apart from the pipeline so the sample log, the model roles and the data-spec parser can
share them without importing each other.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rollout.engines.base import SamplingConfig
from rollout.prompts import STOP_STRINGS, PromptConfig

__all__ = [
    "EVAL_PROMPTS",
    "EVAL_SAMPLING",
    "EvalError",
    "EvalSettings",
    "RefineSettings",
    "eval_sampling",
    "sampling_fingerprint",
]

# The paper's evaluation prompts: no public example in the test prompt.
EVAL_PROMPTS = PromptConfig(show_example_in_test_prompt=False)

# The paper's evaluation sampling. API: sample ``i`` of a prompt is sent with seed ``seed + i``.
# Local engines: each call is seeded from ``seed``, the first sample index and the prompt's
# place in the call. ``seed`` None: no per-request seeds (vLLM's CPU build fails on seeded
# requests whose prompt is prefilled in chunks). Evaluation needs no log-probs.
EVAL_SAMPLING = SamplingConfig(temperature=0.8, top_p=0.95, top_k=40, max_tokens=2048, seed=0,
                               stop=STOP_STRINGS, logprobs=False)
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop")


class EvalError(RuntimeError):
    """A user-facing failure of the evaluation; ``str(err)`` is one line."""


def eval_sampling(**fields: Any) -> SamplingConfig:
    """:data:`EVAL_SAMPLING` with ``fields`` (temperature, top_p, top_k, max_tokens, seed,
    stop) replaced. A negative ``seed`` means unseeded (None), a negative ``top_k`` off (0).
    A bad value raises ValueError naming the field as ``sampling.<field>: ...``."""
    unknown = sorted(set(fields) - set(_SAMPLING_FIELDS))
    if unknown:
        raise ValueError(f"sampling.{unknown[0]}: unknown field (known: {', '.join(_SAMPLING_FIELDS)})")
    if fields.get("seed") is not None and int(fields["seed"]) < 0:
        fields["seed"] = None
    if fields.get("top_k") is not None and int(fields["top_k"]) < 0:
        fields["top_k"] = 0
    values = {f.name: getattr(EVAL_SAMPLING, f.name) for f in dataclasses.fields(SamplingConfig)}
    values.update(fields)
    return SamplingConfig.from_mapping(values, "sampling")


def sampling_fingerprint(sampling: SamplingConfig) -> dict[str, Any]:
    """The sampling fields that change results, as recorded in run.json (unseeded: seed -1)."""
    out: dict[str, Any] = {k: getattr(sampling, k) for k in _SAMPLING_FIELDS}
    out["stop"] = list(sampling.stop)
    out["seed"] = -1 if sampling.seed is None else sampling.seed
    return out


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What to sample and score. ``bon`` pairs need ``n <= k_code`` and ``m <= k_case``;
    ``single_eval`` evaluates code only (no tests are sampled); ``max_gt_tests`` = 0 uses all
    ground-truth tests; ``drop_unparsed_tests``: score as the reference does (unparsed tests
    dropped, see rollout.metrics); ``protocol``: the evaluation protocol these settings come
    from (rollout.contract.protocol; reported with the results). The defaults are the
    "project" protocol's."""

    k_code: int = 16
    k_case: int = 16
    bon: tuple[tuple[int, int], ...] = ((1, 16), (4, 16), (8, 16), (16, 16), (16, 1), (16, 4), (16, 8))
    single_eval: bool = False
    max_gt_tests: int = 0
    drop_unparsed_tests: bool = False
    protocol: str = "project"
    gen_batch: int = 64  # prompts per engine call (vllm/hf); samples per fsync (api)
    exec_batch: int = 8  # problems per sandbox call

    def __post_init__(self) -> None:
        if self.k_code < 1:
            raise ValueError(f"k_code: must be >= 1, got {self.k_code}")
        if self.k_case < 0 or (not self.single_eval and self.k_case < 1):
            raise ValueError(f"k_case: must be >= 1 (or use single_eval), got {self.k_case}")
        for pair in self.bon:
            if len(pair) != 2:
                raise ValueError(f"bon: expected (n, m) pairs, got {pair!r}")
            n, m = pair
            if not 1 <= n <= self.k_code:
                raise ValueError(f"bon: ({n}, {m}) needs 1 <= n <= k_code = {self.k_code}")
            if not 0 <= m <= self.n_tests:
                raise ValueError(f"bon: ({n}, {m}) needs 0 <= m <= k_case = {self.n_tests}"
                                 + (" (single_eval samples no tests)" if self.single_eval else ""))
        if self.gen_batch < 1 or self.exec_batch < 1:
            raise ValueError("gen_batch/exec_batch: must be >= 1")
        if self.max_gt_tests < 0:
            raise ValueError(f"sandbox.max_gt_tests: must be >= 0, 0 = all (got {self.max_gt_tests})")

    def describe(self) -> str:
        """One line for the report: the protocol and the scoring settings it stands for."""
        gt = f"the first {self.max_gt_tests}" if self.max_gt_tests else "all"
        tests = ("unparsed generated tests dropped (a problem without a parsed test is not "
                 "scored)" if self.drop_unparsed_tests else "every sampled test counts "
                 "(an unparsed one as inaccurate)")
        return f"protocol {self.protocol}: {gt} ground-truth tests per problem, {tests}"

    @property
    def n_tests(self) -> int:
        return 0 if self.single_eval else self.k_case


@dataclasses.dataclass(frozen=True)
class RefineSettings:
    """The refinement rounds after BoN (rollout.refine): ``rounds`` (0: off); per repair
    request ``k`` candidates, shown the first ``failing_tests`` generated tests the pick fails,
    each text (input, expected and actual output, error) cut to ``max_chars`` characters."""

    rounds: int = 0
    k: int = 4
    failing_tests: int = 1
    max_chars: int = 1000

    def __post_init__(self) -> None:
        for name, low in (("rounds", 0), ("k", 1), ("failing_tests", 1), ("max_chars", 16)):
            if getattr(self, name) < low:
                raise ValueError(f"refine.{name}: must be >= {low}, got {getattr(self, name)}")

    def fingerprint(self) -> dict[str, Any]:
        """What run.json records: everything that shapes a round's prompts and samples;
        ``rounds`` is left out, so a finished run can be refined further."""
        return {"k": self.k, "failing_tests": self.failing_tests, "max_chars": self.max_chars}
