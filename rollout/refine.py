"""Agentic coding after best-of-N: repair the picked program with the generated tests it fails.

Round 0 is the BoN pick among a problem's ``k_code`` programs: the one that passes the most
generated tests (the first on a tie, the rule of rollout.metrics' BoN with every code and
test). In each round r >= 1, a problem whose pick fails some parsed generated test gets one
repair request: the coder is shown the problem, the pick and the first ``failing_tests``
generated tests it fails (the test's input and expected output, the pick's actual output or
error, each cut to ``max_chars``; rollout.prompts' repair template) and writes ``k``
candidates. They run against the generated tests (and the ground-truth tests, for scoring
only); the candidate that passes the most generated tests (the first on a tie) replaces the
pick when it passes strictly more than the pick does: on a tie the pick stays, so a repair has
to earn its place by the tester's own measure. A problem stops once its pick passes every
parsed generated test, or when it has none, or when its pick holds no program.

Ground truth never reaches the model: it only says whether each round's pick is correct.

Everything is recorded in the run's ``samples.jsonl`` (rollout.eval_log): the candidates as
samples of kind ``repair-<r>``, one ``feedback`` record per request (what the prompt showed,
and which pick it came from) and one ``repair`` record (the candidates' verdict rows). A
re-run recomputes the rounds from those records and only does what is missing; raising
``rounds`` on a finished run adds rounds.

Sandbox faults are not scores: a problem whose feedback run or candidates' execution still
fails inside the sandbox after one retry leaves the refinement (excluded from every round's
accuracy, counted in ``problems_sandbox_error``), and a re-run tries it again.

:func:`refine` takes the generation step as a function, so training can call it later with
its own sampler.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rollout.engines.base import SamplingConfig
from rollout.eval_log import (
    SampleLog,
    exec_is_current,
    exec_record,
    faulted,
    passed_table,
)
from rollout.eval_models import Want
from rollout.eval_settings import EvalError, EvalSettings, RefineSettings
from rollout.execution import execute, gt_tests
from rollout.parsing import ParsedCode, ParsedTest
from rollout.problems import Problem

__all__ = ["Pick", "refine", "repair_kind"]

log = logging.getLogger(__name__)

# Draws the wanted samples with the sampling given and appends them to the log (desc: a label).
Generate = Callable[[list[Want], SamplingConfig, str], None]

ROUND_SEED_STRIDE = 1_000_003  # round r samples with seed + r * stride: new draws each round


def repair_kind(round_: int) -> str:
    """The sample kind of round ``round_``'s repair candidates."""
    return f"repair-{round_}"


@dataclasses.dataclass(frozen=True)
class Pick:
    """A problem's chosen program after a round: where it came from (``round`` 0: the
    initial codes, else that round's candidates; ``index`` among them), its code (None:
    unparsed), its passes over the generated tests and whether it passes the ground truth."""

    round: int
    index: int
    code: str | None
    passed: np.ndarray  # bool [n_tests]
    correct: bool

    def failing(self, parsed: np.ndarray) -> list[int]:
        """The parsed generated tests this pick fails, in order."""
        return [k for k in range(len(parsed)) if parsed[k] and not self.passed[k]]


def _best(rec: dict, codes: Sequence[str | None], round_: int, n_tests: int) -> Pick:
    """The candidate of an exec/repair record that passes the most generated tests (first on
    a tie)."""
    gen = passed_table(rec["gen"], len(codes), n_tests)
    gt = passed_table(rec["gt"], len(codes), rec["n_gt"])
    i = int(np.argmax(gen.sum(axis=1)))
    ok = codes[i] is not None
    return Pick(round_, i, codes[i], gen[i], bool(ok and gt[i].all()))


@dataclasses.dataclass
class _Chain:
    """One problem's way through the rounds."""

    dataset: str
    problem: Problem
    tests: list[ParsedTest]
    picks: list[Pick]
    requests: int = 0
    excluded: bool = False

    def key(self, round_: int) -> tuple[str, str, int]:
        """This problem's key in the log's feedback and repair records of round ``round_``."""
        return (self.dataset, self.problem.task_id, round_)

    @property
    def parsed(self) -> np.ndarray:
        return np.array([t.ok for t in self.tests], dtype=bool)

    def needs_repair(self) -> bool:
        pick = self.picks[-1]
        return not self.excluded and pick.code is not None and bool(pick.failing(self.parsed))


def _cut(text: str, limit: int) -> str:
    text = text.rstrip("\n")
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"


_VERDICT_ERRORS = {"TIME_LIMIT": "time limit exceeded", "MEMORY_LIMIT": "memory limit exceeded",
                   "OUTPUT_LIMIT": "output limit exceeded"}


def _failure(test: ParsedTest, ran: Any, limit: int) -> dict[str, str]:
    """What a repair prompt shows of one failing test (a sandbox.Execution of the pick)."""
    name = ran.verdict.name
    error = ""
    if name in _VERDICT_ERRORS:
        error = _VERDICT_ERRORS[name]
    elif name in ("RUNTIME_ERROR", "COMPILE_ERROR"):
        error = _cut(ran.stderr_tail or f"exit code {ran.exit_code}", limit)
    return {"input": _cut(test.input or "", limit), "expected": _cut(test.output or "", limit),
            "output": _cut(ran.stdout or "", limit), "error": error,
            "verdict": name.lower().replace("_", " ")}


def _feedback(chains: list[_Chain], round_: int, rs: RefineSettings, sb: Any,
              slog: SampleLog) -> None:
    """Runs each chain's pick on its first failing tests (actual output and error for the
    prompt) and appends the feedback records; a sandbox fault after a retry excludes the
    chain."""
    from sandbox import Verdict

    jobs = [(c, k) for c in chains for k in c.picks[-1].failing(c.parsed)[:rs.failing_tests]]

    def run(job: tuple[_Chain, int]) -> Any:
        c, k = job
        t = c.tests[k]
        for _ in range(2):
            ran = sb.run(c.picks[-1].code, t.input, c.problem.test_time_limit, expected=t.output)
            if ran.verdict != Verdict.SANDBOX_ERROR:
                break
        return ran

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(run, jobs))
    shown: dict[int, list[tuple[int, dict]]] = {id(c): [] for c in chains}
    faults = set()
    for (c, k), ran in zip(jobs, results):
        if ran.verdict == Verdict.SANDBOX_ERROR:
            faults.add(id(c))
        shown[id(c)].append((k, _failure(c.tests[k], ran, rs.max_chars)))
    records = []
    for c in chains:
        if id(c) in faults:
            log.warning("%s/%s: the sandbox failed to run the pick for its repair prompt "
                        "(SANDBOX_ERROR after a retry): left out of the refinement",
                        c.dataset, c.problem.task_id)
            c.excluded = True
            continue
        pick = c.picks[-1]
        records.append({"type": "feedback", "dataset": c.dataset, "task_id": c.problem.task_id,
                        "round": round_, "pick": [pick.round, pick.index],
                        "tests": [k for k, _ in shown[id(c)]],
                        "failures": [f for _, f in shown[id(c)]]})
    slog.append(records)


def _execute(chains: list[_Chain], round_: int, rs: RefineSettings, settings: EvalSettings,
             sb: Any, slog: SampleLog) -> None:
    """The round's candidates x (generated + ground-truth tests), one sandbox call per
    ``exec_batch`` problems; appends the repair records."""
    kind = repair_kind(round_)
    for start in range(0, len(chains), settings.exec_batch):
        chunk = chains[start:start + settings.exec_batch]
        codes = [[ParsedCode(x) for x in slog.codes(c.dataset, c.problem.task_id, kind, rs.k)]
                 for c in chunk]
        ran = execute([c.problem for c in chunk], codes, [c.tests for c in chunk],
                      max_gt_tests=settings.max_gt_tests, sandbox=sb)
        slog.append([exec_record(ran, i, c.dataset, c.problem.task_id, rs.k, settings.n_tests)
                     | {"type": "repair", "round": round_} for i, c in enumerate(chunk)])


def _start(ds: str, p: Problem, slog: SampleLog, settings: EvalSettings) -> _Chain:
    """A problem's chain at round 0: its generated tests and its BoN pick."""
    codes = slog.codes(ds, p.task_id, "code", settings.k_code)
    return _Chain(ds, p, slog.tests(ds, p.task_id, settings.n_tests),
                  [_best(slog.execs[(ds, p.task_id)], codes, 0, settings.n_tests)])


def refine(datasets: Mapping[str, Sequence[Problem]], slog: SampleLog, settings: EvalSettings,
           rs: RefineSettings, role: Any, generate: Generate, sampling: SamplingConfig,
           sandbox_factory: Callable[[], Any]) -> dict[str, dict]:
    """Runs (or resumes) ``rs.rounds`` refinement rounds over the scored problems of
    ``datasets`` (their code and test samples and exec records are in ``slog``) and returns
    per dataset the ``refine`` entry of metrics.json: ``accuracy`` (the picks' accuracy after
    rounds 0..R), ``repair_requests`` (in all) and ``repair_requests_by_round``,
    ``problems`` (scored) and ``problems_sandbox_error`` (left out for a sandbox fault).

    ``role``: the coder (``repair_prompt(problem, code, failures)`` renders its prompt);
    ``generate(wants, sampling, desc)`` draws the wanted samples and appends them to ``slog``;
    round r samples with ``sampling``'s seed plus ``r * ROUND_SEED_STRIDE`` (a request repeated
    in the next round, same pick and same failures, gets new draws)."""
    chains = [_start(ds, p, slog, settings) for ds, problems in datasets.items() for p in problems]
    if settings.drop_unparsed_tests:  # the protocol scores no problem without a parsed test
        chains = [c for c in chains if c.parsed.any()]
    with sandbox_factory() as sb:
        for r in range(1, rs.rounds + 1):
            active = [c for c in chains if c.needs_repair()]
            if not active:
                break
            for c in active:
                rec = slog.feedback.get(c.key(r))
                if rec is not None and rec["pick"] != [c.picks[-1].round, c.picks[-1].index]:
                    raise EvalError(f"{slog.path}: the round-{r} repair of {c.dataset}/"
                                    f"{c.problem.task_id} started from another pick than the "
                                    "records give now; use a new out_dir")
            _feedback([c for c in active if c.key(r) not in slog.feedback], r, rs, sb, slog)
            active = [c for c in active if not c.excluded]
            kind = repair_kind(r)
            wants = []
            for c in active:
                missing = [i for i in range(rs.k) if (c.dataset, c.problem.task_id, kind, i)
                           not in slog.samples]
                if missing:
                    prompt = role.repair_prompt(c.problem, c.picks[-1].code,
                                                slog.feedback[c.key(r)]["failures"])
                    wants.append(Want(c.dataset, c.problem, kind, prompt, missing))
            seed = None if sampling.seed is None else sampling.seed + r * ROUND_SEED_STRIDE
            generate(wants, dataclasses.replace(sampling, seed=seed), f"generate repairs, round {r}")
            _execute([c for c in active if not exec_is_current(
                slog.repairs.get(c.key(r)), rs.k, settings.n_tests,
                len(gt_tests(c.problem, settings.max_gt_tests)))], r, rs, settings, sb, slog)
            for c in active:
                rec = slog.repairs[c.key(r)]
                c.requests += 1
                if faulted(rec):
                    c.excluded = True
                    continue
                best = _best(rec, slog.codes(c.dataset, c.problem.task_id, kind, rs.k), r,
                             settings.n_tests)
                if best.passed.sum() > c.picks[-1].passed.sum():
                    c.picks.append(best)
    return {ds: _metrics([c for c in chains if c.dataset == ds], rs.rounds) for ds in datasets}


def _metrics(chains: list[_Chain], rounds: int) -> dict:
    scored = [c for c in chains if not c.excluded]

    def correct_after(c: _Chain, r: int) -> bool:
        return [p for p in c.picks if p.round <= r][-1].correct

    by_round = [sum(1 for c in scored if c.requests > r) for r in range(rounds)]
    return {"accuracy": [sum(correct_after(c, r) for c in scored) / len(scored) if scored else None
                         for r in range(rounds + 1)],
            "repair_requests": int(sum(by_round)), "repair_requests_by_round": by_round,
            "problems": len(scored), "problems_sandbox_error": len(chains) - len(scored)}
