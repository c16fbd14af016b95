"""rollout.contract.stats: per-host statistics merge into exactly what one host would report.

Evaluation: random per-problem tables (rollout.metrics.evaluate_table) split over 1-3 hosts in
every way, empty hosts included, merge into aggregate() of all of them. Rollout: a real
ExperienceMaker with a scripted engine and the real sandbox makes one batch whole and once per
host; the merged host statistics equal the whole batch's, key by key. Sharding: the partition
is numpy.array_split's, and the server's evaluate command with ``shard`` merges back to the
unsharded result.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from rollout import metrics
from rollout.contract.stats import (
    ROLLOUT_RULES,
    StatsKeyError,
    check_shard,
    merge_eval_metrics,
    merge_rollout_stats,
    rates,
    shard_range,
)
from rollout.experience_maker import EvalConfig, ExperienceMaker, RolloutConfig
from rollout.problems import embedded_problems
from rollout.prompts import PromptBuilder, PromptConfig
from rollout.rewards import RewardConfig
from tests.helpers.scripted_rollout import (
    BAD,
    CORRECT,
    CORRECT2,
    GOOD,
    GOOD2,
    NO_CODE_LONG,
    NO_TEST,
    OFF_BY_ONE,
    ScriptedEngine,
    sandbox_fixture,
)

BON = [(1, 0), (1, 3), (2, 2), (4, 4)]


# ------------------------------------------------------------------------------ evaluation
def _tables(rng: np.random.Generator, P: int) -> list[dict]:
    out = []
    for _ in range(P):
        n, m, t = 4 + int(rng.integers(0, 3)), 4 + int(rng.integers(0, 3)), int(rng.integers(1, 4))
        out.append(metrics.evaluate_table(
            rng.random((n, m)) < 0.5, rng.random((n, t)) < 0.6, BON,
            code_parsed=rng.random(n) < 0.85, test_parsed=rng.random(m) < 0.85))
    return out


def _host_result(tables: list[dict], host: int) -> dict:
    """What ExperienceMaker.evaluate returns for these tables (timings, verdicts and sandbox
    faults made up)."""
    if not tables:
        return ExperienceMaker._empty_evaluation(EvalConfig(k_code=4, k_case=4, bon=tuple(BON)))
    out = metrics.aggregate(tables)
    out.update(generate_s=1.0 + host, sandbox_s=3.0 - host,
               verdicts={"OK": 2 * len(tables), "WRONG_ANSWER": host + len(tables)},
               problems_sandbox_error=host, sandbox_retries=host + 1)
    return out


def _splits(P: int, hosts: int):
    """Every assignment of P problems to contiguous hosts (cut points), empty hosts included."""
    for cuts in itertools.combinations_with_replacement(range(P + 1), hosts - 1):
        bounds = (0, *cuts, P)
        yield [range(a, b) for a, b in itertools.pairwise(bounds)]


def test_eval_merge_equals_aggregate_for_every_split():
    rng = np.random.default_rng(0)
    tables = _tables(rng, 7)
    n_checked = 0
    for hosts in (1, 2, 3):
        for parts in _splits(len(tables), hosts):
            per_host = [_host_result([tables[i] for i in part], h) for h, part in enumerate(parts)]
            merged = merge_eval_metrics(per_host)
            want = metrics.aggregate(tables)
            want.update(generate_s=max(h["generate_s"] for h in per_host),
                        sandbox_s=max(h["sandbox_s"] for h in per_host),
                        verdicts={"OK": sum(h["verdicts"].get("OK", 0) for h in per_host),
                                  "WRONG_ANSWER": sum(h["verdicts"].get("WRONG_ANSWER", 0)
                                                      for h in per_host)},
                        problems_sandbox_error=sum(h["problems_sandbox_error"] for h in per_host),
                        sandbox_retries=sum(h["sandbox_retries"] for h in per_host))
            assert merged == want, (hosts, parts)  # exact: ratios of summed integers
            n_checked += 1
    assert n_checked == 1 + 8 + 36


def test_eval_merge_of_shuffled_hosts_and_one_host():
    rng = np.random.default_rng(1)
    tables = _tables(rng, 9)
    want = metrics.aggregate(tables)
    for trial in range(5):  # non-contiguous shares: pooled counts do not care
        owner = rng.integers(0, 3, size=len(tables))
        per_host = [metrics.aggregate([t for t, o in zip(tables, owner) if o == h])
                    for h in range(3)]
        assert merge_eval_metrics(per_host) == want
    one = _host_result(tables, 0)
    assert merge_eval_metrics([one]) == one
    assert metrics.aggregate(tables)["bon"] == {  # bon_sum / problems is the old mean
        metrics.bon_key(n, m): float(np.mean([t["bon"][metrics.bon_key(n, m)] for t in tables]))
        for n, m in BON}


def test_eval_merge_of_empty_hosts_only():
    empty = ExperienceMaker._empty_evaluation(EvalConfig(k_code=4, k_case=4, bon=tuple(BON)))
    merged = merge_eval_metrics([empty, empty])
    assert merged["problems"] == 0 and merged["code_accuracy"] is None
    assert merged["bon"] == {k: None for k in empty["bon"]} and merged["counts"]["n_codes"] == 0
    assert set(merged) == set(_host_result(_tables(np.random.default_rng(2), 1), 0))


def test_eval_merge_errors():
    rng = np.random.default_rng(3)
    a = _host_result(_tables(rng, 2), 0)
    with pytest.raises(StatsKeyError, match="'accuracy_at_5'"):
        merge_eval_metrics([a, {**a, "accuracy_at_5": 0.5}])
    b = metrics.aggregate([metrics.evaluate_table(np.ones((2, 2), bool), np.ones((2, 1), bool),
                                                  [(1, 1)])])
    with pytest.raises(ValueError, match="different BoN pairs"):
        merge_eval_metrics([{k: a[k] for k in b}, b])
    with pytest.raises(StatsKeyError, match="'counts'"):
        merge_eval_metrics([{k: v for k, v in a.items() if k != "counts"}])
    with pytest.raises(StatsKeyError, match="'ut_tests'"):
        rates({k: 1 for k in metrics.aggregate([])["counts"] if k != "ut_tests"})
    with pytest.raises(ValueError, match="no hosts"):
        merge_eval_metrics([])


# ------------------------------------------------------------------------------ rollout stats
CODES = [CORRECT, CORRECT2, OFF_BY_ONE, NO_CODE_LONG]  # a long unparsed code, truncated
TESTS = [GOOD, GOOD2, BAD, NO_TEST]
TRUNCATED = {NO_CODE_LONG, NO_TEST}

# variant -> (code responses, test responses), chosen to cover every case: signal on both
# sides, no correct code (tests undefined), every code correct, nothing parsed.
SCRIPTS = {0: ([0, 2, 3], [0, 2, 3]), 1: ([2, 2, 3], [0, 1, 2]), 2: ([0, 1, 0], [0, 1, 3]),
           3: ([1, 2, 2], [2, 1, 0]), 4: ([3, 3, 3], [3, 3, 3]), 5: ([0, 2, 1], [1, 2, 2])}


def _prompt_keyed_engine() -> ScriptedEngine:
    """Responses decided by the prompt alone (a stand-in for the *model*), so a problem gets
    the same samples whichever batch or host it is in: scripted for "Variant i" problems,
    else drawn by a hash of the prompt. Byte tokens, log-prob -0.5."""
    return ScriptedEngine(CODES, TESTS, scripts=SCRIPTS, hash_unscripted=True, exact_n=False,
                          truncated=TRUNCATED)


sandbox = sandbox_fixture()


def _variants() -> list:
    (p,) = [q for q in embedded_problems("train") if q.task_id == "embedded/sum_of_list"]
    return [dataclasses.replace(p, task_id=f"{p.task_id}/v{i}",
                                question=f"{p.question}\n\nVariant {i}.") for i in SCRIPTS]


def _assert_same_stats(merged: dict, whole: dict) -> None:
    assert set(merged) == set(whole), set(merged) ^ set(whole)
    for k, want in whole.items():
        got = merged[k]
        if k.endswith("_s"):
            continue  # durations: the max over hosts, not the whole batch's time
        if isinstance(want, float) and ROLLOUT_RULES.get(k, ("",))[0] in ("mean", "std"):
            assert got == pytest.approx(want, rel=0, abs=1e-9), k
        else:
            assert got == want, k  # counts, ratios of integers, min/max, texts: exact


def test_rollout_stats_of_hosts_merge_into_the_whole_batch(sandbox):
    cfg = RolloutConfig(k_code=3, k_case=3, max_gt_tests=2, max_tokens=64, seed=7)
    maker = ExperienceMaker(_prompt_keyed_engine(), sandbox, cfg, RewardConfig(scaling="fraction"),
                            PromptBuilder(PromptConfig(mode="raw")))
    problems = _variants()
    order = [1, 4, 0, 2, 3, 5]  # host 0 of the 3-way split has no correct code

    def make(idx):
        return maker.make([problems[i] for i in idx], idx, step=3, version=9)[1]

    whole = make(order)
    assert 0 < whole["code_accuracy"] < 1 and 0 < whole["truncated_rate"] < 1
    assert whole["problems_without_correct_code"] == 2 and whole["problems_all_codes_correct"] == 1
    assert whole["code_rows"] == whole["test_rows"] == 18 and whole["counts"]["problems"] == 6
    assert whole["code_reward_count"] == 18 and whole["test_reward_count"] == 12
    halves = [make(order[:3]), make(order[3:])]
    _assert_same_stats(merge_rollout_stats(halves), whole)
    thirds = [make(order[:1]), make(order[1:3]), make(order[3:])]
    assert thirds[0]["test_reward_count"] == 0 and "test_reward_std" not in thirds[0]
    _assert_same_stats(merge_rollout_stats(thirds), whole)
    assert merge_rollout_stats([whole]) == whole


def test_rollout_merge_errors():
    base = {"rows": 4, "step": 1, "version": 2, "generate_s": 0.5}
    with pytest.raises(StatsKeyError, match="'reward_median'"):
        merge_rollout_stats([base, {**base, "reward_median": 0.3}])
    with pytest.raises(StatsKeyError, match="'rows'.*host 1"):
        merge_rollout_stats([base, {k: v for k, v in base.items() if k != "rows"}])
    with pytest.raises(ValueError, match="step: the hosts disagree"):
        merge_rollout_stats([base, {**base, "step": 2}])
    with pytest.raises(StatsKeyError, match="code_len_mean: needs 'code_rows'"):
        merge_rollout_stats([{"code_len_mean": 3.0}, {"code_len_mean": 2.0}])
    got = merge_rollout_stats([base, {**base, "version": 1, "generate_s": 0.7, "rows": 2}])
    assert got == {"rows": 6, "step": 1, "version": 1, "generate_s": 0.7}


def test_pooled_moments_from_arrays():
    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, 101)
    stats = []
    for part in np.split(x, [0, 17, 17, 60]):  # includes empty hosts
        s = {"code_advantage_count": int(part.size)}
        if part.size:
            s.update(code_advantage_mean=float(part.mean()), code_advantage_std=float(part.std()),
                     code_advantage_min=float(part.min()), code_advantage_max=float(part.max()))
        stats.append(s)
    got = merge_rollout_stats(stats)
    assert got["code_advantage_count"] == 101
    assert got["code_advantage_mean"] == pytest.approx(x.mean(), rel=0, abs=1e-12)
    assert got["code_advantage_std"] == pytest.approx(x.std(), rel=0, abs=1e-12)
    assert (got["code_advantage_min"], got["code_advantage_max"]) == (x.min(), x.max())


# ------------------------------------------------------------------------------ sharding
@pytest.mark.parametrize("n", [0, 1, 5, 12, 13])
@pytest.mark.parametrize("count", [1, 2, 3, 7, 20])
def test_shard_range_is_array_split(n, count):
    shards = [shard_range(n, i, count) for i in range(count)]
    for i, s in enumerate(shards):
        assert list(s) == np.array_split(np.arange(n), count)[i].tolist()
    assert [j for s in shards for j in s] == list(range(n))  # disjoint, union in order
    assert shards == [shard_range(n, i, count) for i in range(count)]  # stable


def test_check_shard_errors():
    assert check_shard([1, 3]) == (1, 3) and check_shard((np.int64(0), 1)) == (0, 1)
    for bad in ([3, 3], [-1, 2], [0, 0], [1], "01", [0.5, 2], [True, 2], None):
        with pytest.raises(ValueError, match=r"^shard: expected \[index, count\]"):
            check_shard(bad)


class _Chan:
    def send(self, msg):
        pass


def test_server_evaluate_shards_merge_into_the_unsharded_result(sandbox):
    from rollout.server import Server

    srv = Server.__new__(Server)  # the evaluate command alone, no engine process or buffers
    srv.chan, srv.version, srv.busy = _Chan(), 4, None
    srv.splits, srv.data_dir = {"eval": "embedded:eval"}, "data"
    srv.eval_cfg = EvalConfig(k_code=2, k_case=2, max_gt_tests=1, bon=((1, 1), (2, 2), (2, 0)))
    srv.maker = ExperienceMaker(_prompt_keyed_engine(), sandbox, RolloutConfig(),
                                prompt_builder=PromptBuilder(PromptConfig(mode="raw")))

    def run(**kw):
        rep = srv.evaluate({"cmd": "evaluate", "split": "eval", "max_problems": 4, **kw})
        return {k: v for k, v in rep["metrics"].items() if not k.endswith("_s")}, rep

    whole, _ = run()
    assert whole["problems"] == 4 and whole["counts"]["n_codes"] == 8
    for count in (3, 6):  # 6 > 4 problems: shards 4 and 5 are empty
        parts = [run(shard=[i, count]) for i in range(count)]
        assert [p["problems"] for p, _ in parts] == [len(shard_range(4, i, count))
                                                     for i in range(count)]
        assert [rep["shard"] for _, rep in parts] == [[i, count] for i in range(count)]
        merged = merge_eval_metrics([rep["metrics"] for _, rep in parts])
        assert {k: v for k, v in merged.items() if not k.endswith("_s")} == whole
    with pytest.raises(ValueError, match=r"^shard: .*got \[2, 2\]"):
        run(shard=[2, 2])
