r"""CURE experience for one training step: problems -> experience rows (the learner's batch).

For a batch of problems::

    code prompt  -> k_code samples      test prompt -> k_case samples        (one engine call each)
    parse: last ```python block          parse: last Test Input / Test Output
    sandbox (one run_matrices call over the whole batch):
        parsed codes x (parsed generated tests + first max_gt_tests ground-truth tests)
    execution matrix B per problem, unparsed rows/columns all False (rollout.rewards.mask_unparsed)
    rollout.rewards.batch_rewards: raw CURE rewards -> per-problem normalised advantages
    rows: one per response (codes then tests of problem 0, then problem 1, ...)

Rows follow the experience schema (``rollout.contract.schema``): ``tokens`` int32 [N, L]
(prompt then response, right-padded), ``prompt_len``, ``response_len`` int32 [N],
``rollout_logprobs`` float32 [N, L] (log-prob of ``tokens[i, t]`` at response positions, 0
elsewhere), ``advantage``, ``reward`` float32 [N], ``kind`` int8 [N] (0 code, 1 test),
``problem_id``, ``policy_version`` int32 [N]; plus ``has_signal`` int8 [N]: 0 for a row whose
group (its problem's codes, or its tests) carries no signal (advantage 0). Such rows are kept
and marked, never silently dropped; whether the learner sees them is the trainer's choice
(``rollout.drop_zero_signal``).

Sandbox faults are not rewards: a problem whose execution still holds a SANDBOX_ERROR cell after
one retry (``rollout.execution.execute``) is excluded. Its rows stay in the batch with reward 0,
advantage 0 and ``has_signal`` 0; no score counts it (accuracies, parse rates, p_01/p_00,
reward and advantage statistics, ``problems`` are over the other problems); it is counted in
``problems_sandbox_error`` (and the problems executed twice in ``sandbox_retries``). The
same holds for :meth:`ExperienceMaker.evaluate`.

A frozen external tester (``cure.tester``, label-free): the tests come from the tester's engine
(its own prompt builder and tokenizer, no log-probs) instead of the policy's; they run against
the policy's codes and reward them label-free, and the batch holds the code rows only: the
tester is not trained, so its tests are no rows (``test_*`` statistics that describe tests
describe the tester's; ``test_rows`` is 0). Training problems without ground-truth tests (only
label-free) are executed against generated tests alone; the statistics that need ground truth
(accuracies, p_01/p_00, parse rates: ``rollout.metrics``) cover the problems that have it, None
when none has, and ``problems_without_gt`` counts the others. Evaluation needs them.

A response longer than ``max_len - prompt_len`` tokens is truncated for training (the reference
generates 10k tokens and trains on 8k); its reward still comes from the whole response.

The same generate-parse-execute core serves evaluation (:meth:`ExperienceMaker.evaluate`), with
the evaluation sampling and prompts and ``rollout.metrics`` for the numbers.

No jax here; torch/vLLM are reached only through the engine object handed in.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rollout import metrics as cure_metrics
from rollout.contract.schema import KIND_CODE, KIND_TEST
from rollout.contract.sections import EvalConfig, RolloutConfig
from rollout.engines.base import Sample, SamplingConfig
from rollout.execution import execute
from rollout.parsing import ParsedCode, ParsedTest, parse_code, parse_test
from rollout.problems import Problem, check_labeled
from rollout.prompts import STOP_STRINGS, PromptBuilder
from rollout.rewards import BatchRewards, RewardConfig, batch_rewards

__all__ = [
    "EvalConfig",
    "ExecutedBatch",
    "ExperienceMaker",
    "RolloutConfig",
    "heldout_sampling",
    "step_seed",
    "train_sampling",
]


# The row length L is rounded up to a multiple of this.
LENGTH_MULTIPLE = 8


def train_sampling(cfg: RolloutConfig, seed: int | None) -> SamplingConfig:
    """Sampling of a training request: the log-probs of the sampled tokens are experience."""
    return SamplingConfig.of(cfg, seed=seed, logprobs=True, stop=STOP_STRINGS)


def heldout_sampling(cfg: EvalConfig, seed: int | None) -> SamplingConfig:
    """Sampling of an evaluation request (no log-probs)."""
    return SamplingConfig.of(cfg, seed=seed, logprobs=False, stop=STOP_STRINGS)


def step_seed(base: int, step: int, kind: int) -> int | None:
    """Seed of the first request of ``kind`` (0 code, 1 test) at training step ``step``:
    distinct per step and kind, the same after a resume. None when ``base < 0``."""
    if base < 0:
        return None
    return (base * 1_000_003 + step * 2 * 65_537 + kind * 65_537) % (2**31 - 1)


# ----------------------------------------------------------------------------- core


@dataclasses.dataclass
class ExecutedBatch:
    """Samples, parses and execution matrices of a batch of problems (one entry per problem)."""

    problems: list[Problem]
    codes: list[list[Sample]]
    tests: list[list[Sample]]
    parsed_codes: list[list[ParsedCode]]
    parsed_tests: list[list[ParsedTest]]
    gen_passed: list[np.ndarray]      # bool [k_code, k_case], unparsed rows/cols False
    gt_passed: list[np.ndarray]       # bool [k_code, n_gt]
    verdicts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    retried: list[int] = dataclasses.field(default_factory=list)   # executed twice (a fault)
    excluded: list[int] = dataclasses.field(default_factory=list)  # still faulted: not scored

    def scored(self) -> list[int]:
        """Problems whose execution the sandbox carried out (all but :attr:`excluded`)."""
        bad = set(self.excluded)
        return [i for i in range(len(self.problems)) if i not in bad]

    def code_parsed(self, i: int) -> np.ndarray:
        return np.array([p.ok for p in self.parsed_codes[i]], dtype=bool)

    def test_parsed(self, i: int) -> np.ndarray:
        return np.array([p.ok for p in self.parsed_tests[i]], dtype=bool)


def generate_and_execute(engine: Any, builder: PromptBuilder, sandbox: Any,
                         problems: Sequence[Problem], *, k_code: int, k_case: int,
                         code_sampling: SamplingConfig, test_sampling: SamplingConfig,
                         max_gt_tests: int, show_example: bool | None, test_engine: Any = None,
                         test_builder: PromptBuilder | None = None,
                         evaluation: bool = False) -> ExecutedBatch:
    """Sample codes and tests for every problem, parse them and run the whole batch's matrices
    in one ``sandbox.run_matrices`` call (:func:`rollout.execution.execute`, which executes the
    problems with a SANDBOX_ERROR cell once more and reports those still faulted). The tests
    come from ``test_engine`` with ``test_builder``'s prompts (a frozen tester) when given.
    ``evaluation``: the prompts are evaluation prompts (the templates' ``evaluation``)."""
    t0 = time.perf_counter()
    test_engine = engine if test_engine is None else test_engine
    test_builder = builder if test_builder is None else test_builder
    code_prompts = [builder.code_prompt(p, evaluation=evaluation) for p in problems]
    test_prompts = [test_builder.test_prompt(p, show_example, evaluation=evaluation)
                    for p in problems]
    codes = engine.generate(code_prompts, k_code, code_sampling)
    tests = test_engine.generate(test_prompts, k_case, test_sampling)
    for what, got, k in (("code", codes, k_code), ("test", tests, k_case)):
        if len(got) != len(problems) or any(len(s) != k for s in got):
            raise RuntimeError(f"engine returned {[len(s) for s in got]} {what} samples for "
                               f"{len(problems)} prompts, expected {k} each")
    t1 = time.perf_counter()
    parsed_codes = [[parse_code(s.text) for s in row] for row in codes]
    parsed_tests = [[parse_test(s.text) for s in row] for row in tests]

    ran = execute(problems, parsed_codes, parsed_tests, max_gt_tests=max_gt_tests,
                  sandbox=sandbox)
    t2 = time.perf_counter()
    return ExecutedBatch(list(problems), codes, tests, parsed_codes, parsed_tests,
                         ran.gen_passed, ran.gt_passed, ran.counts,
                         {"generate_s": t1 - t0, "sandbox_s": t2 - t1},
                         retried=list(ran.retried), excluded=list(ran.excluded))


def _describe(prefix: str, x: np.ndarray) -> dict[str, float]:
    """``<prefix>_count`` always, and ``_mean``, ``_std``, ``_min``, ``_max`` (in float64) when
    there are values: the count lets a multi-host merge weight the mean and pool the variance
    exactly (``rollout.contract.stats``)."""
    x = np.asarray(x, dtype=np.float64)
    out: dict[str, float] = {f"{prefix}_count": int(x.size)}
    if x.size:
        out.update({f"{prefix}_mean": float(x.mean()), f"{prefix}_std": float(x.std()),
                    f"{prefix}_min": float(x.min()), f"{prefix}_max": float(x.max())})
    return out


class ExperienceMaker:
    """Turns problems into CURE experience rows with a given engine and sandbox; ``tester``: a
    frozen tester's engine writing the training tests (label-free only; see the module doc),
    prompted by ``tester_builder`` (default: the prompt config, the tester's tokenizer)."""

    def __init__(self, engine: Any, sandbox: Any, config: RolloutConfig = RolloutConfig(),
                 reward_config: RewardConfig | None = None,
                 prompt_builder: PromptBuilder | None = None, tester: Any = None,
                 tester_builder: PromptBuilder | None = None) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.config = config
        self.reward_config = reward_config if reward_config is not None else RewardConfig()
        self.builder = prompt_builder or PromptBuilder(tokenizer=getattr(engine, "tokenizer", None))
        if tester is not None and not self.reward_config.label_free:
            raise ValueError("tester: a frozen tester rewards codes label-free; it needs "
                             "RewardConfig.label_free=True")
        self.tester = tester
        self.tester_builder = tester_builder or (None if tester is None else PromptBuilder(
            self.builder.config, tokenizer=getattr(tester, "tokenizer", None)))

    # ------------------------------------------------------------------ training
    def make(self, problems: Sequence[Problem], problem_ids: Sequence[int], *, step: int,
             version: int) -> tuple[dict[str, np.ndarray], dict[str, Any], ExecutedBatch]:
        """Experience rows for ``problems`` (``problem_ids``: their global ids) sampled with the
        policy of ``version``. Returns (arrays, stats, executed batch)."""
        cfg = self.config
        if len(problems) != len(problem_ids):
            raise ValueError(f"problem_ids: {len(problem_ids)} ids for {len(problems)} problems")
        if not problems:
            raise ValueError("problems: a training step needs at least one problem")
        test_sampling = train_sampling(cfg, step_seed(cfg.seed, step, KIND_TEST))
        if self.tester is not None:  # its tests are no rows: no log-probs needed
            test_sampling = dataclasses.replace(test_sampling, logprobs=False)
        ex = generate_and_execute(
            self.engine, self.builder, self.sandbox, problems, k_code=cfg.k_code,
            k_case=cfg.k_case,
            code_sampling=train_sampling(cfg, step_seed(cfg.seed, step, KIND_CODE)),
            test_sampling=test_sampling, max_gt_tests=cfg.max_gt_tests,
            show_example=None,  # the prompt config decides
            test_engine=self.tester, test_builder=self.tester_builder)
        t0 = time.perf_counter()
        keep = ex.scored()
        br = self._rewards(ex, keep)
        t1 = time.perf_counter()
        arrays = self._rows(ex, br, keep, problem_ids, version)
        stats = self._stats(ex, br, keep, arrays)
        stats.update(ex.timings)
        stats.update(rewards_s=t1 - t0, rows_s=time.perf_counter() - t1, step=step,
                     version=version)
        return arrays, stats, ex

    def _rewards(self, ex: ExecutedBatch, keep: Sequence[int]) -> BatchRewards:
        """``batch_rewards`` over the scored problems ``keep`` only (problem ``keep[s]`` is
        entry ``s``): an excluded problem's faulted matrix never enters a normalisation or a
        statistic. With none scored, an empty result of the same layout (zero statistics)."""
        idx = list(keep) if keep else list(range(len(ex.problems)))
        br = batch_rewards(
            [ex.gen_passed[i] for i in idx], [ex.gt_passed[i] for i in idx], self.reward_config,
            code_parsed=[ex.code_parsed(i) for i in idx],
            test_parsed=[ex.test_parsed(i) for i in idx],
            code_lengths=[np.array([len(s.token_ids) for s in ex.codes[i]]) for i in idx],
            test_lengths=[np.array([len(s.token_ids) for s in ex.tests[i]]) for i in idx])
        if keep:
            return br
        # Every problem faulted: batch_rewards ran only to give the layout of an empty result.
        empty = {f.name: (v[:1] if f.name.endswith("_offsets") else v[:0])
                 for f in dataclasses.fields(br)
                 if isinstance(v := getattr(br, f.name), np.ndarray)}
        return dataclasses.replace(br, **empty, stats={k: 0.0 for k in br.stats})

    def _rows(self, ex: ExecutedBatch, br: BatchRewards, keep: Sequence[int],
              problem_ids: Sequence[int], version: int) -> dict[str, np.ndarray]:
        cfg = self.config
        samples: list[Sample] = []
        kind, pid, adv, rew, sig = [], [], [], [], []
        entry = {i: s for s, i in enumerate(keep)}  # problem -> its entry in br
        for i in range(len(ex.problems)):
            e = entry.get(i)  # None: excluded (a sandbox fault), no signal
            for j, s in enumerate(ex.codes[i]):
                samples.append(s)
                kind.append(KIND_CODE)
                pid.append(problem_ids[i])
                k = None if e is None else br.code_offsets[e] + j
                adv.append(0.0 if k is None else br.code_advantage[k])
                rew.append(0.0 if k is None else br.code_raw[k])
                sig.append(False if k is None else br.code_has_signal[k])
            for j, s in enumerate(() if self.tester is not None else ex.tests[i]):
                samples.append(s)
                kind.append(KIND_TEST)
                pid.append(problem_ids[i])
                k = None if e is None else br.test_offsets[e] + j
                adv.append(0.0 if k is None else br.test_advantage[k])
                rew.append(0.0 if k is None else br.test_raw[k])
                sig.append(False if k is None else br.test_has_signal[k])
        n = len(samples)
        plen = np.array([len(s.prompt_token_ids) for s in samples], dtype=np.int32)
        if (plen < 1).any():
            raise RuntimeError("engine returned a sample without its prompt token ids")
        rlen = np.array([len(s.token_ids) for s in samples], dtype=np.int32)
        if cfg.max_len:
            rlen = np.minimum(rlen, np.maximum(cfg.max_len - plen, 0)).astype(np.int32)
            plen = np.minimum(plen, cfg.max_len).astype(np.int32)
        total = plen + rlen
        m = LENGTH_MULTIPLE
        L = max(m, -(-int(total.max(initial=1)) // m) * m)
        tokens = np.zeros((n, L), np.int32)
        logp = np.zeros((n, L), np.float32)
        for r, s in enumerate(samples):
            p, q = int(plen[r]), int(rlen[r])
            tokens[r, :p] = s.prompt_token_ids[:p]
            tokens[r, p:p + q] = s.token_ids[:q]
            if s.logprobs is None:
                raise RuntimeError("engine returned a sample without per-token log-probs")
            logp[r, p:p + q] = s.logprobs[:q]
        return {
            "tokens": tokens, "prompt_len": plen, "response_len": rlen,
            "rollout_logprobs": logp, "advantage": np.asarray(adv, np.float32),
            "kind": np.asarray(kind, np.int8), "problem_id": np.asarray(pid, np.int32),
            "policy_version": np.full(n, version, np.int32),
            "reward": np.asarray(rew, np.float32), "has_signal": np.asarray(sig, np.int8),
        }

    def _stats(self, ex: ExecutedBatch, br: BatchRewards, keep: Sequence[int],
               arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        labeled = [i for i in keep if ex.gt_passed[i].shape[1]]  # the others: label-free only
        tables = [cure_metrics.evaluate_table(ex.gen_passed[i], ex.gt_passed[i],
                                              code_parsed=ex.code_parsed(i),
                                              test_parsed=ex.test_parsed(i)) for i in labeled]
        agg = cure_metrics.aggregate(tables)
        stats: dict[str, Any] = {k: v for k, v in br.stats.items()}
        for k in ("code_accuracy", "unit_test_accuracy", "p_01", "p_00", "code_parse_rate",
                  "test_parse_rate"):
            stats[k] = agg[k]
        kind = arrays["kind"]
        rlen = arrays["response_len"]
        sig = arrays["has_signal"] > 0
        stats.update(_describe("code_reward", br.code_raw))
        defined = br.test_raw[br.test_defined]
        stats.update(_describe("test_reward", defined))
        stats.update(_describe("code_advantage", br.code_advantage))
        stats.update(_describe("test_advantage", br.test_advantage[:0] if self.tester
                               is not None else br.test_advantage))  # a tester's: no rows
        for name, k in (("code", KIND_CODE), ("test", KIND_TEST)):
            lens = rlen[kind == k]
            stats[f"{name}_len_mean"] = float(lens.mean()) if lens.size else 0.0
            stats[f"{name}_len_max"] = float(lens.max()) if lens.size else 0.0
        finish = [s.finish_reason for row in ex.codes + ([] if self.tester is not None
                                                         else ex.tests) for s in row]
        stats["truncated_rate"] = float(np.mean([f == "length" for f in finish])) if finish else 0.0
        stats["prompt_len_mean"] = float(arrays["prompt_len"].mean())
        stats["rows"] = len(kind)
        # The counts behind the ratios and means above, so that several hosts' statistics
        # merge exactly (rollout.contract.stats.merge_rollout_stats).
        stats["counts"] = agg["counts"]
        stats["code_rows"] = int((kind == KIND_CODE).sum())
        stats["test_rows"] = int((kind == KIND_TEST).sum())
        stats["code_correct_count"] = int(br.code_correct.sum())
        stats["scored_code_rows"] = int(br.code_correct.size)  # code_correct_rate's denominator
        stats["code_correct_rate"] = (stats["code_correct_count"] / stats["scored_code_rows"]
                                      if stats["scored_code_rows"] else 0.0)
        stats["truncated_rows"] = sum(f == "length" for f in finish)
        stats["rows_with_signal"] = int(sig.sum())
        stats["code_rows_with_signal"] = int((sig & (kind == KIND_CODE)).sum())
        stats["test_rows_with_signal"] = int((sig & (kind == KIND_TEST)).sum())
        stats["verdicts"] = dict(sorted(ex.verdicts.items()))
        stats["executions"] = int(sum(ex.verdicts.values()))
        stats["problems_sandbox_error"] = len(ex.excluded)
        stats["sandbox_retries"] = len(ex.retried)
        stats["problems_without_gt"] = len(keep) - len(labeled)
        # One response of each kind, for a text summary (what the policy writes right now).
        stats["sample_code"] = ex.codes[0][0].text[:2000]
        stats["sample_test"] = ex.tests[0][0].text[:2000]
        return stats

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, problems: Sequence[Problem], config: EvalConfig = EvalConfig()
                 ) -> dict[str, Any]:
        """Code/unit-test accuracy, BoN, p_01/p_00, accumulate accuracies, parse rates and
        mean response lengths on ``problems`` with the engine's current weights (rollout.metrics
        over one sampled table per problem), under ``config``'s evaluation protocol (an
        unresolved ``auto`` one is resolved without a data spec: ``project``). No problems (an
        empty shard) give zero counts and None rates, without sampling."""
        config = config.resolved()
        if not problems:  # an empty shard of a split evaluation
            return self._empty_evaluation(config)
        check_labeled(problems)
        ex = generate_and_execute(
            self.engine, self.builder, self.sandbox, problems, k_code=config.k_code,
            k_case=config.k_case, code_sampling=heldout_sampling(config, config.seed),
            test_sampling=heldout_sampling(config,
                                           None if config.seed < 0 else config.seed + 7919),
            max_gt_tests=config.max_gt_tests, show_example=False, evaluation=True)
        tables = [cure_metrics.evaluate_table(
            ex.gen_passed[i], ex.gt_passed[i], config.bon, code_parsed=ex.code_parsed(i),
            test_parsed=ex.test_parsed(i), drop_unparsed_tests=config.drop_unparsed_tests,
            code_lengths=[len(s.token_ids) for s in ex.codes[i]],
            test_lengths=[len(s.token_ids) for s in ex.tests[i]])
                  for i in ex.scored()]  # a problem the sandbox failed on is not scored
        out = cure_metrics.aggregate(tables)
        if not tables:  # every problem faulted: the BoN keys of the config, as for no problems
            out = self._empty_evaluation(config)
        out.update(ex.timings)
        out["verdicts"] = dict(sorted(ex.verdicts.items()))
        out["problems_sandbox_error"] = len(ex.excluded)
        out["sandbox_retries"] = len(ex.retried)
        return out

    @staticmethod
    def _empty_evaluation(config: EvalConfig) -> dict[str, Any]:
        """The result of :meth:`evaluate` on no problems (a host whose shard is empty): zero
        counts, None rates and BoN, the same keys as any other host's result, so the merge
        (``rollout.contract.stats.merge_eval_metrics``) needs no special case."""
        config = config.resolved()
        out = cure_metrics.aggregate([], bon_keys=[cure_metrics.bon_key(n, m)
                                                   for n, m in config.bon])
        out.update(generate_s=0.0, sandbox_s=0.0, verdicts={}, problems_sandbox_error=0,
                   sandbox_retries=0)
        return out
