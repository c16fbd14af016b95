"""Exact merges of per-host rollout statistics and held-out metrics (numpy + stdlib only).

When cure-train runs as several processes, each host's rollout server works on its share of the
problems and reports its own statistics. The trainer gathers those dicts and merges them here
into what one host would have reported on the union of the problems: from counts (sums), never
as a mean of means. Ratios of integer counts come out exactly; weighted means and pooled
standard deviations agree with the single-host computation to ~1e-15. Counts are integers and
must be gathered as integers (JSON ints), not through a float32 array.

Every key has a rule, listed in one place: :data:`ROLLOUT_RULES` (the statistics of
``rollout.experience_maker.ExperienceMaker.make``, including what
``rollout.rewards.batch_rewards`` reports) and :data:`EVAL_RULES` (the metrics of
``ExperienceMaker.evaluate``); a key ending in ``_s`` is a duration (max over hosts, since the
hosts run side by side). A key without a rule is a :class:`StatsKeyError` naming it, so a new
statistic cannot be merged wrongly in silence: give it a rule here when you add it.

Rules (``(name, *arguments)``):

- ``sum``: summed (counts); ``sum_dict``: summed per name, recursively (``verdicts``, ``counts``);
- ``rates``: the headline ratio recomputed by :func:`rates` from the summed ``counts``;
  ``bon``: BoN recomputed by :func:`bon_rates` (summed ``bon_sum`` / summed ``problems``);
  ``bon_accumulate``: by :func:`bon_accumulate_rates` (summed ``bon_acc_sum`` / ``gt_tests``);
- ``ratio, num, den, empty``: summed ``num`` / summed ``den`` (``empty`` when ``den`` sums to 0);
- ``mean, weight``: mean weighted by the hosts' ``weight`` (a host with weight 0 contributes
  nothing; when every weight is 0 the hosts' default, the first host's value, is kept);
- ``std, prefix``: pooled standard deviation from ``<prefix>_count``, ``<prefix>_mean`` and
  ``<prefix>_std`` (within-host plus between-host variance, the numerically stable form);
- ``min`` / ``max``; ``same`` (every host must agree); ``first`` (the first host having it).

Keys marked optional in :data:`OPTIONAL` may be missing on a host (``<prefix>_mean/std/min/max``
are reported only when the host had values); every other key must come from every host.

The evaluation split: :func:`shard_range` gives host ``index`` of ``count`` its contiguous chunk
of ``n`` problems in :func:`numpy.array_split` order, so the shards of ``0..count-1`` are disjoint
and their union, in order, is the whole list.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DESCRIBED",
    "EVAL_RULES",
    "OPTIONAL",
    "RATIOS",
    "ROLLOUT_RULES",
    "StatsKeyError",
    "bon_accumulate_rates",
    "bon_rates",
    "check_shard",
    "merge_eval_metrics",
    "merge_rollout_stats",
    "rates",
    "shard_range",
]


class StatsKeyError(KeyError):
    """A statistic has no merge rule, or a host lacks a key its rule needs (one line)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# headline ratio -> (numerator count, denominator count) of rollout.metrics' counts
RATIOS: dict[str, tuple[str, str]] = {
    "code_accuracy": ("n_correct_codes", "n_scored_codes"),
    "code_accumulate_accuracy": ("gt_cells_passed", "gt_cells"),
    "unit_test_accuracy": ("ut_accurate", "ut_tests"),  # the protocol's convention
    "unit_test_accuracy_all_tests": ("ut_accurate", "ut_tests_all"),
    "unit_test_accuracy_parsed_tests": ("ut_accurate", "ut_tests_parsed"),
    "unit_test_accumulate_accuracy": ("ut_cells_passed", "ut_cells"),
    "p_01": ("p01_pass", "p01_pairs"),
    "p_00": ("p00_pass", "p00_pairs"),
    "code_parse_rate": ("n_code_parsed", "n_codes"),
    "test_parse_rate": ("n_test_parsed", "n_tests"),
    "mean_code_length": ("code_len_sum", "code_len_count"),  # tokens
    "mean_test_length": ("test_len_sum", "test_len_count"),
}

# arrays that ExperienceMaker describes as <prefix>_{count,mean,std,min,max}
DESCRIBED = ("code_reward", "test_reward", "code_advantage", "test_advantage")

SUM, SUM_DICT, RATES, BON = ("sum",), ("sum_dict",), ("rates",), ("bon",)
BON_ACCUMULATE = ("bon_accumulate",)
MIN, MAX, SAME, FIRST = ("min",), ("max",), ("same",), ("first",)

# ExperienceMaker.make statistics -> rule (durations, "*_s", are max over hosts)
ROLLOUT_RULES: dict[str, tuple] = {
    # counts
    "problems": SUM, "rows": SUM, "code_rows": SUM, "test_rows": SUM,
    "rows_with_signal": SUM, "code_rows_with_signal": SUM, "test_rows_with_signal": SUM,
    "problems_with_code_signal": SUM, "problems_with_test_signal": SUM,
    "problems_without_correct_code": SUM, "problems_all_codes_correct": SUM,
    "code_correct_count": SUM, "truncated_rows": SUM, "executions": SUM,
    "verdicts": SUM_DICT, "counts": SUM_DICT,
    # sandbox faults: problems excluded (SANDBOX_ERROR after a retry), problems retried
    "problems_sandbox_error": SUM, "sandbox_retries": SUM, "scored_code_rows": SUM,
    # label-free training: scored problems without ground-truth tests (not in the "counts")
    "problems_without_gt": SUM,
    # ratios of summed counts
    **{k: RATES for k in RATIOS},
    "code_correct_rate": ("ratio", "code_correct_count", "scored_code_rows", 0.0),
    "truncated_rate": ("ratio", "truncated_rows", "rows", 0.0),
    # lengths
    "prompt_len_mean": ("mean", "rows"),
    "code_len_mean": ("mean", "code_rows"), "code_len_max": MAX,
    "test_len_mean": ("mean", "test_rows"), "test_len_max": MAX,
    # rewards and advantages: <prefix>_count, _mean, _std, _min, _max
    **{k: v for p in DESCRIBED for k, v in (
        (f"{p}_count", SUM), (f"{p}_mean", ("mean", f"{p}_count")), (f"{p}_std", ("std", p)),
        (f"{p}_min", MIN), (f"{p}_max", MAX))},
    # identity of the batch and what the policy writes
    "step": SAME, "version": MIN,  # the stalest policy among the hosts
    "sample_code": FIRST, "sample_test": FIRST,
}

# ExperienceMaker.evaluate metrics -> rule (durations, "*_s", are max over hosts)
EVAL_RULES: dict[str, tuple] = {
    "problems": SUM, "counts": SUM_DICT, "verdicts": SUM_DICT, "bon": BON,
    "bon_accumulate": BON_ACCUMULATE, "problems_without_parsed_test": SUM,
    "problems_sandbox_error": SUM, "sandbox_retries": SUM,
    **{k: RATES for k in RATIOS},
}

# keys a host may leave out (reported only when the host had values to describe)
OPTIONAL = frozenset(f"{p}_{s}" for p in DESCRIBED for s in ("mean", "std", "min", "max"))


# ------------------------------------------------------------------------------ ratios
def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def rates(counts: Mapping[str, float]) -> dict[str, float | None]:
    """The headline ratios (:data:`RATIOS`) from summed counts; None on an empty denominator.
    The one home of this arithmetic: ``rollout.metrics.aggregate`` and the merges use it."""
    missing = sorted({c for pair in RATIOS.values() for c in pair} - set(counts))
    if missing:
        raise StatsKeyError(f"counts: missing {missing[0]!r} (needed by the headline ratios)")
    return {k: _ratio(counts[num], counts[den]) for k, (num, den) in RATIOS.items()}


def _bon_order(key: str) -> tuple[int, ...]:
    return tuple(int(x) for x in key.split("x"))


def bon_rates(counts: Mapping[str, Any]) -> dict[str, float | None]:
    """BoN "NxM" -> ``bon_sum[NxM] / problems`` (None with no problems), sorted by (N, M)."""
    problems = counts.get("problems")
    if problems is None:
        raise StatsKeyError("counts: missing 'problems' (needed by BoN)")
    sums = counts.get("bon_sum") or {}
    return {k: _ratio(sums[k], problems) for k in sorted(sums, key=_bon_order)}


def bon_accumulate_rates(counts: Mapping[str, Any]) -> dict[str, float | None]:
    """BoN accumulate "NxM" -> ``bon_acc_sum[NxM] / gt_tests``: the share of the scored
    problems' ground-truth tests that the BoN picks pass (None with none), sorted by (N, M)."""
    gt_tests = counts.get("gt_tests")
    if gt_tests is None:
        raise StatsKeyError("counts: missing 'gt_tests' (needed by the BoN accumulate accuracy)")
    sums = counts.get("bon_acc_sum") or {}
    return {k: _ratio(sums[k], gt_tests) for k in sorted(sums, key=_bon_order)}


# ------------------------------------------------------------------------------ merging
def _sum_dicts(dicts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-name sums of dicts of numbers (nested dicts summed recursively); names in
    first-seen order."""
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, Mapping):
                out[k] = _sum_dicts([out.get(k, {}), v])
            else:
                out[k] = out.get(k, 0) + v
    return out


def _need(hosts: Sequence[Mapping[str, Any]], key: str, for_key: str) -> list[Any]:
    """``key`` of every host; a host without it is a StatsKeyError naming both keys."""
    for i, h in enumerate(hosts):
        if key not in h:
            raise StatsKeyError(f"{for_key}: needs {key!r}, missing from host {i}")
    return [h[key] for h in hosts]


def _weighted_mean(hosts: Sequence[Mapping[str, Any]], key: str, weight: str) -> float:
    have = [h for h in hosts if key in h]
    ws = _need(have, weight, key)
    live = [(w, h[key]) for w, h in zip(ws, have) if w]
    if len(live) <= 1:  # one host's mean as it is; none: every host has the same default
        return live[0][1] if live else have[0][key]
    return sum(w * v for w, v in live) / sum(ws)


def _pooled_std(hosts: Sequence[Mapping[str, Any]], prefix: str) -> float:
    key = f"{prefix}_std"
    have = [h for h in hosts if key in h]
    ns = _need(have, f"{prefix}_count", key)
    means = _need(have, f"{prefix}_mean", key)
    live = [(n, m, h[key]) for n, m, h in zip(ns, means, have) if n]
    if len(live) <= 1:
        return live[0][2] if live else have[0][key]
    total = sum(n for n, _, _ in live)
    mean = sum(n * m for n, m, _ in live) / total
    ss = sum(n * (sd * sd + (m - mean) ** 2) for n, m, sd in live)
    return math.sqrt(ss / total)


def _same(values: Sequence[Any], key: str) -> Any:
    if any(v != values[0] for v in values):
        raise ValueError(f"{key}: the hosts disagree ({values}); they must report the same value")
    return values[0]


def _merge_key(key: str, rule: tuple, hosts: Sequence[Mapping[str, Any]],
               counts: Mapping[str, Any] | None) -> Any:
    """One key of the merged dict by its rule (see the module docstring)."""
    name = rule[0]
    values = [h[key] for h in hosts if key in h]
    if name in ("rates", "bon", "bon_accumulate"):
        if counts is None:
            raise StatsKeyError(f"{key}: needs 'counts' from every host")
        if name == "bon_accumulate":
            return bon_accumulate_rates(counts)
        return bon_rates(counts) if name == "bon" else rates(counts)[key]
    if name == "ratio":
        num, den = sum(_need(hosts, rule[1], key)), sum(_need(hosts, rule[2], key))
        return num / den if den else rule[3]
    if name == "mean":
        return _weighted_mean(hosts, key, rule[1])
    if name == "std":
        return _pooled_std(hosts, rule[1])
    if name == "sum":
        return sum(values)
    if name == "sum_dict":
        return _sum_dicts(values)
    if name in ("min", "max"):
        return min(values) if name == "min" else max(values)
    if name == "same":
        return _same(values, key)
    if name == "first":
        return values[0]
    raise ValueError(f"{key}: unknown merge rule {rule!r}")


def _rule(rules: Mapping[str, tuple], key: str, what: str) -> tuple:
    if key in rules:
        return rules[key]
    if key.endswith("_s"):
        return MAX
    raise StatsKeyError(f"{what}: no merge rule for key {key!r}; give it one in "
                        f"rollout/contract/stats.py before a host reports it")


def _merge(per_host: Sequence[Mapping[str, Any]], rules: Mapping[str, tuple], what: str
           ) -> dict[str, Any]:
    """Merge per-host dicts key by key; keys in first-seen order."""
    hosts = list(per_host)
    if not hosts:
        raise ValueError(f"{what}: no hosts to merge")
    keys = list(dict.fromkeys(k for h in hosts for k in h))
    plan = {k: _rule(rules, k, what) for k in keys}
    for k in keys:
        if k not in OPTIONAL:
            _need(hosts, k, k)
    counts = _sum_dicts([h["counts"] for h in hosts]) if all("counts" in h for h in hosts) else None
    return {k: _merge_key(k, plan[k], hosts, counts) for k in keys}


def merge_rollout_stats(per_host: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-host statistics of one training step (``ExperienceMaker.make``, in host order) ->
    the statistics one host would report for the whole batch (rules: :data:`ROLLOUT_RULES`)."""
    return _merge(per_host, ROLLOUT_RULES, "rollout stats")


def merge_eval_metrics(per_host: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-host held-out metrics (``ExperienceMaker.evaluate`` on each host's shard, hosts with
    no problems included) -> the metrics of one evaluation on the union of the problems
    (rules: :data:`EVAL_RULES`)."""
    hosts = list(per_host)
    keysets = {tuple(sorted((h.get("counts") or {}).get("bon_sum") or {}))
               for h in hosts if h.get("problems")}
    if len(keysets) > 1:
        raise ValueError(f"bon: the hosts report different BoN pairs {sorted(keysets)}; "
                         f"every host must evaluate the same list")
    return _merge(hosts, EVAL_RULES, "eval metrics")


# ------------------------------------------------------------------------------ sharding
def check_shard(shard: Any) -> tuple[int, int]:
    """``[index, count]`` -> (index, count), with 0 <= index < count; else a one-line
    ValueError naming the field."""
    ok = (isinstance(shard, Sequence) and not isinstance(shard, str) and len(shard) == 2
          and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in shard))
    if not ok:
        raise ValueError(f"shard: expected [index, count] (two integers), got {shard!r}")
    index, count = int(shard[0]), int(shard[1])
    if not 0 <= index < count:
        raise ValueError(f"shard: expected [index, count] with 0 <= index < count, got {shard!r}")
    return index, count


def shard_range(n: int, index: int, count: int) -> range:
    """Positions of shard ``index`` of ``count`` among ``n`` items: contiguous chunks in
    :func:`numpy.array_split` order (the first ``n % count`` chunks one longer), so the shards
    are disjoint, their union in order is ``range(n)``, and a shard past ``n`` is empty."""
    index, count = check_shard((index, count))
    if n < 0:
        raise ValueError(f"shard: the number of items must be >= 0, got {n}")
    size, extra = divmod(n, count)
    start = index * size + min(index, extra)
    return range(start, start + size + (index < extra))
