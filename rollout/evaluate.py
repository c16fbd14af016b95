r"""The evaluation pipeline behind ``cure-eval``: one-shot coding, unit-test generation and BoN.

For every problem of every dataset::

    code prompt  -> k_code samples from the coder  -> parse the last ```python block
    test prompt  -> k_case samples from the tester -> parse the last Test Input / Test Output
    sandbox: parsed codes x (parsed generated tests + ground-truth tests) -> verdict matrix
    rollout.metrics: code accuracy, unit-test accuracy, BoN(n, m), p_01, p_00, parse rates
    refine.rounds > 0: repair the BoN pick with its failing generated tests (rollout.refine)

The coder and the tester may be different models on different engines (e.g. a hosted coder
with our tester). The test prompt shows no public example by default (the paper's evaluation).

Nothing is lost: every sample is appended to ``<out_dir>/samples.jsonl`` the moment it exists
(one JSON object per line, flushed and fsynced per batch), and so is every problem's execution
matrix. Re-running the same command reads that file first and only does what is missing; a
line cut short by a crash is dropped and redone. ``run.json`` records the settings that change
results (models, sampling, prompts); resuming with different ones is refused with the fields
named. Raising ``k_code``/``k_case`` on a finished run only draws the extra samples (and
re-executes those problems).

Sandbox faults are not scores: a problem whose execution still holds a SANDBOX_ERROR cell
after one retry (``rollout.execution.execute``) is excluded from every metric of its dataset
and counted in ``problems_sandbox_error``; its exec record keeps ``sandbox_errors`` > 0, and a
re-run executes it again.

Scoring follows the settings' evaluation protocol (``EvalSettings.protocol``,
``max_gt_tests``, ``drop_unparsed_tests``; rollout.contract.protocol and rollout.metrics).

Outputs in ``out_dir``: ``metrics.json`` (per dataset: ``protocol``, ``code_accuracy``,
``code_accumulate_accuracy``, ``unit_test_accuracy`` (the protocol's convention),
``unit_test_accuracy_all_tests``, ``unit_test_accuracy_parsed_tests``,
``unit_test_accumulate_accuracy``, ``bon`` and ``bon_accumulate`` {"NxM": acc}, ``p_01``,
``p_00``, ``n_problems`` (the problems scored), ``problems_sandbox_error`` (the problems
excluded), ``problems_without_parsed_test``, ``code_parse_rate``, ``test_parse_rate``,
``mean_code_length`` and ``mean_test_length`` (tokens), and with refinement rounds ``refine``:
the pick's ``accuracy`` after rounds 0..R and the ``repair_requests``), ``results.md`` (the paper-style
table, with the protocol and a note on excluded problems) and ``bon.png`` (BoN accuracy over n
and over m) and ``refine.png`` (accuracy by round), written by :mod:`rollout.eval_report`.

No jax here (rollout never imports it); torch/vLLM load only when a local engine is used.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rollout import metrics as cure_metrics
from rollout.datasets import resolve_datasets
from rollout.engines.base import SamplingConfig
from rollout.eval_log import (
    RUN_FILE,
    SAMPLES_FILE,
    SampleLog,
    check_run_file,
    exec_is_current,
    exec_record,
    faulted,
    passed_table,
)
from rollout.eval_models import (
    ModelSpec,
    Roles,
    Want,
    default_engine_factory,
)
from rollout.eval_report import write_reports
from rollout.eval_settings import (
    EVAL_PROMPTS,
    EVAL_SAMPLING,
    EvalError,
    EvalSettings,
    RefineSettings,
    eval_sampling,
    sampling_fingerprint,
)
from rollout.execution import execute, gt_tests
from rollout.parsing import ParsedCode, parse_code, parse_test
from rollout.problems import Problem
from rollout.prompts import PromptConfig
from rollout.refine import refine as run_refinement

__all__ = [
    "RUN_FILE",
    "SAMPLES_FILE",
    "EvalError",
    "EvalSettings",
    "ModelSpec",
    "RefineSettings",
    "dataset_metrics",
    "eval_sampling",
    "evaluate",
    "problem_table",
    "resolve_datasets",
    "summary_scalars",
    "write_summaries",
]

log = logging.getLogger(__name__)

KINDS = ("code", "test")
DEFAULT_SETTINGS = EvalSettings()
NO_REFINEMENT = RefineSettings()


def _sample_record(want: Want, index: int, text: str, extra: dict, model: str) -> dict:
    rec = {"type": "sample", "dataset": want.dataset, "task_id": want.problem.task_id,
           "kind": want.kind, "index": index, "model": model, "response": text}
    rec.update(extra)
    if want.kind == "test":
        t = parse_test(text)
        rec.update(test_input=t.input, test_output=t.output, parse_error=t.reason)
    else:  # a code or a repair candidate
        p = parse_code(text)
        rec.update(code=p.code, parse_error=p.reason)
    return rec


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=not enabled, dynamic_ncols=True)


def _generate(role: Any, wants: list[Want], sampling: SamplingConfig, slog: SampleLog,
              desc: str, show: bool) -> None:
    """Draws every wanted sample; each batch the role yields is appended and fsynced at once
    (a failure or Ctrl-C keeps every batch that finished)."""
    total = sum(len(w.indices) for w in wants)
    if not total:
        return
    with _progress(total, desc, show) as bar:
        for batch in role.run(wants, sampling):
            slog.append([_sample_record(wants[w], i, text, extra, role.spec.label)
                         for w, i, text, extra in batch])
            bar.update(len(batch))


def _execute(jobs: list[tuple[str, Problem]], slog: SampleLog, settings: EvalSettings,
             sandbox_factory: Callable[[], Any], show: bool) -> None:
    """Runs codes x (generated + ground-truth tests) for each job (rollout.execution, one
    sandbox call per ``exec_batch`` problems) and appends its exec records."""
    if not jobs:
        return
    with sandbox_factory() as sb, _progress(len(jobs), "execute", show) as bar:
        for start in range(0, len(jobs), settings.exec_batch):
            chunk = jobs[start:start + settings.exec_batch]
            codes = [[ParsedCode(c) for c in slog.codes(ds, p.task_id, "code", settings.k_code)]
                     for ds, p in chunk]
            tests = [slog.tests(ds, p.task_id, settings.n_tests) for ds, p in chunk]
            ran = execute([p for _, p in chunk], codes, tests,
                          max_gt_tests=settings.max_gt_tests, sandbox=sb)
            records = [exec_record(ran, i, ds, p.task_id, settings.k_code, settings.n_tests)
                       for i, (ds, p) in enumerate(chunk)]
            slog.append(records)
            bar.update(len(chunk))


def problem_table(slog: SampleLog, ds: str, p: Problem, settings: EvalSettings) -> dict:
    """Per-problem metrics (rollout.metrics.evaluate_table) from its exec and sample records
    (response lengths: the samples' ``response_tokens``, where the engine reported them)."""
    rec = slog.execs[(ds, p.task_id)]
    n, m = settings.k_code, settings.n_tests
    codes = [slog.samples[(ds, p.task_id, "code", i)] for i in range(n)]
    tests = [slog.samples[(ds, p.task_id, "test", k)] for k in range(m)]
    return cure_metrics.evaluate_table(
        passed_table(rec["gen"], n, m), passed_table(rec["gt"], n, rec["n_gt"]), list(settings.bon),
        code_parsed=np.array([c["code"] is not None for c in codes], dtype=bool),
        test_parsed=np.array([t["test_input"] is not None for t in tests], dtype=bool),
        drop_unparsed_tests=settings.drop_unparsed_tests,
        code_lengths=[c.get("response_tokens") for c in codes],
        test_lengths=[t.get("response_tokens") for t in tests])


def summary_scalars(metrics: Mapping[str, dict], prefix: str = "eval") -> dict[str, float]:
    """Flat ``{"<prefix>/<dataset>/<metric>": value}`` for TensorBoard (cure-train's
    periodic evaluation); BoN entries become ``.../bon_NxM`` (``.../bon_accumulate_NxM``), the
    refinement's ``.../refine_accuracy_<round>``; undefined (None) rates and text (the
    protocol's name) are left out."""
    out: dict[str, float] = {}

    def put(tag: str, v: Any) -> None:
        if isinstance(v, Mapping):
            for k, x in v.items():
                put(f"{tag}_{k}", x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                put(f"{tag}_{i}", x)
        elif v is not None and not isinstance(v, str):
            out[tag] = float(v)

    for ds, r in metrics.items():
        for k, v in r.items():
            put(f"{prefix}/{ds}/{k}", v)
    return out


def write_summaries(metrics: Mapping[str, dict], logdir: str | os.PathLike[str], step: int,
                    prefix: str = "eval") -> int:
    """Appends :func:`summary_scalars` at ``step`` to TensorBoard event files in ``logdir``
    (tensorboardX: no TensorFlow needed). Returns the number of scalars written."""
    from tensorboardX import SummaryWriter

    scalars = summary_scalars(metrics, prefix)
    writer = SummaryWriter(str(logdir))
    try:
        for tag, value in sorted(scalars.items()):
            writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()
    return len(scalars)


_DATASET_KEYS = (
    "code_accuracy", "code_accumulate_accuracy", "unit_test_accuracy",
    "unit_test_accuracy_all_tests", "unit_test_accuracy_parsed_tests",
    "unit_test_accumulate_accuracy", "bon", "bon_accumulate", "p_01", "p_00",
    "code_parse_rate", "test_parse_rate", "mean_code_length", "mean_test_length",
    "problems_without_parsed_test",
)


def dataset_metrics(tables: Iterable[dict], sandbox_errors: int = 0,
                    protocol: str | None = None) -> dict:
    """The metrics.json entry of one dataset from the per-problem tables of its problems the
    sandbox executed; ``sandbox_errors``: the problems excluded for a sandbox fault
    (``problems_sandbox_error``); ``protocol``: the evaluation protocol's name, recorded."""
    agg = cure_metrics.aggregate(tables)
    out: dict[str, Any] = {"protocol": protocol} if protocol else {}
    out.update(n_problems=agg["problems"], problems_sandbox_error=int(sandbox_errors))
    out.update({k: agg[k] for k in _DATASET_KEYS})
    return out


def evaluate(
    datasets: Mapping[str, Sequence[Problem]],
    coder: ModelSpec,
    out_dir: str | os.PathLike[str],
    *,
    tester: ModelSpec | None = None,
    settings: EvalSettings = DEFAULT_SETTINGS,
    sampling: SamplingConfig = EVAL_SAMPLING,
    prompt_config: PromptConfig = EVAL_PROMPTS,
    refine: RefineSettings = NO_REFINEMENT,
    sandbox_factory: Callable[[], Any] | None = None,
    engine_factory: Callable[[ModelSpec], Any] = default_engine_factory,
    engine: Any = None,
    progress: bool = True,
    reports: bool = True,
) -> dict[str, dict]:
    """Runs (or resumes) the evaluation and returns {dataset: metrics}; see the module doc.

    ``engine``: a running local engine (engines interface, with a ``tokenizer``) to use for
    ``coder`` (and for the tester when it is the same spec) instead of building one; it is not
    closed. cure-train evaluates the weights it holds this way, with ``reports=False``
    and :func:`summary_scalars` for TensorBoard.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tester = tester or coder
    show_example = prompt_config.show_example_in_test_prompt
    fingerprint = {
        "coder": coder.public(),
        "tester": tester.public() if not settings.single_eval else None,
        "sampling": sampling_fingerprint(sampling),
        "prompts": {k: (str(v) if v is not None else None)  # the repair template: "refine"
                    for k, v in dataclasses.asdict(prompt_config).items() if k != "repair_template"},
        "max_gt_tests": settings.max_gt_tests,
    }
    if refine.rounds and settings.single_eval:
        raise EvalError("refine.rounds: the refinement rounds need generated tests; "
                        "single_eval samples none")
    fingerprint["refine"] = (refine.fingerprint() | {
        "k_code": settings.k_code, "k_case": settings.k_case,
        "repair_template": prompt_config.repair_template} if refine.rounds else None)
    check_run_file(out, fingerprint, optional=("refine",))
    if sandbox_factory is None:
        from sandbox import Limits, Sandbox

        sandbox_factory = lambda: Sandbox(limits=Limits())

    with (SampleLog(out / SAMPLES_FILE) as slog,
          Roles(out, prompt_config, settings.gen_batch, engine_factory, engine, coder) as roles):
        plan = [("code", coder, settings.k_code)]
        if not settings.single_eval:
            plan.append(("test", tester, settings.k_case))
        for kind, spec, k in plan:
            missing = [(ds, p, idx) for ds, problems in datasets.items() for p in problems
                       if (idx := [i for i in range(k)
                                   if (ds, p.task_id, kind, i) not in slog.samples])]
            if not missing:
                continue  # nothing to draw: the engine is not even started
            role = roles.get(spec)
            wants = [Want(ds, p, kind, role.prompt(p, kind, show_example), idx)
                     for ds, p, idx in missing]
            _generate(role, wants, sampling, slog, f"generate {kind}s ({role.spec.label})", progress)
        if not refine.rounds:
            roles.close()  # the engines' memory goes back before the sandbox starts

        jobs = [(ds, p) for ds, problems in datasets.items() for p in problems
                if not exec_is_current(slog.execs.get((ds, p.task_id)), settings.k_code,
                                       settings.n_tests, len(gt_tests(p, settings.max_gt_tests)))]
        _execute(jobs, slog, settings, sandbox_factory, progress)

        result: dict[str, dict] = {}
        scored: dict[str, list[Problem]] = {}
        for ds, problems in datasets.items():
            bad = {p.task_id for p in problems if faulted(slog.execs[(ds, p.task_id)])}
            if bad:
                log.warning("%s: %d of %d problems not scored: their execution failed inside "
                            "the sandbox (SANDBOX_ERROR after a retry)", ds, len(bad), len(problems))
            result[ds] = dataset_metrics((problem_table(slog, ds, p, settings) for p in problems
                                          if p.task_id not in bad), sandbox_errors=len(bad),
                                         protocol=settings.protocol)
            scored[ds] = [p for p in problems if p.task_id not in bad]
        if refine.rounds:
            role = roles.get(coder)
            rounds = run_refinement(
                scored, slog, settings, refine, role,
                lambda wants, s, desc: _generate(role, wants, s, slog,
                                                 f"{desc} ({coder.label})", progress),
                sampling, sandbox_factory)
            for ds, entry in rounds.items():
                result[ds]["refine"] = entry
    if reports:
        model = coder.label if tester is coder or settings.single_eval else \
            f"{coder.label} + {tester.label} (tester)"
        write_reports(result, out, model=model, bon=settings.bon, single_eval=settings.single_eval,
                      note=f"{settings.describe()}; {sampling.max_tokens} new tokens at most, "
                           f"prompts {prompt_config.mode}.")
    return result
