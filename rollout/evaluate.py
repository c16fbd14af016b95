r"""The evaluation pipeline behind ``cure-eval``: one-shot coding, unit-test generation and BoN.

For every problem of every dataset::

    code prompt  -> k_code samples from the coder  -> parse the last ```python block
    test prompt  -> k_case samples from the tester -> parse the last Test Input / Test Output
    sandbox: parsed codes x (parsed generated tests + ground-truth tests) -> verdict matrix
    rollout.metrics: code accuracy, unit-test accuracy, BoN(n, m), p_01, p_00, parse rates

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
``mean_code_length`` and ``mean_test_length`` (tokens)), ``results.md`` (the paper-style
table, with the protocol and a note on excluded problems) and ``bon.png`` (BoN accuracy over n
and over m), written by :mod:`rollout.eval_report`.

No jax here (rollout never imports it); torch/vLLM load only when a local engine is used.
"""
from __future__ import annotations

import dataclasses
import json
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
    passed_table,
    verdict_rows,
)
from rollout.eval_models import (
    ApiRole,
    LocalRole,
    ModelSpec,
    Want,
    default_engine_factory,
    ensure_hf_model,
)
from rollout.eval_report import write_reports
from rollout.eval_settings import (
    EVAL_PROMPTS,
    EVAL_SAMPLING,
    EvalError,
    EvalSettings,
    eval_sampling,
    sampling_fingerprint,
)
from rollout.execution import execute, gt_tests
from rollout.parsing import ParsedCode, ParsedTest, parse_code, parse_test
from rollout.problems import Problem
from rollout.prompts import PromptConfig

__all__ = [
    "RUN_FILE",
    "SAMPLES_FILE",
    "EvalError",
    "EvalSettings",
    "ModelSpec",
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


def _sample_record(want: Want, index: int, text: str, extra: dict, model: str) -> dict:
    rec = {"type": "sample", "dataset": want.dataset, "task_id": want.problem.task_id,
           "kind": want.kind, "index": index, "model": model, "response": text}
    rec.update(extra)
    if want.kind == "code":
        p = parse_code(text)
        rec.update(code=p.code, parse_error=p.reason)
    else:
        t = parse_test(text)
        rec.update(test_input=t.input, test_output=t.output, parse_error=t.reason)
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
            codes = [[ParsedCode(slog.samples[(ds, p.task_id, "code", i)]["code"])
                      for i in range(settings.k_code)] for ds, p in chunk]
            tests = [[ParsedTest(t["test_input"], t["test_output"])
                      for t in (slog.samples[(ds, p.task_id, "test", k)]
                                for k in range(settings.n_tests))] for ds, p in chunk]
            ran = execute([p for _, p in chunk], codes, tests,
                          max_gt_tests=settings.max_gt_tests, sandbox=sb)
            records = []
            for i, (ds, p) in enumerate(chunk):
                errors = ran.sandbox_errors(i)
                if errors:
                    log.warning("%s/%s: %d executions failed inside the sandbox after a retry "
                                "(SANDBOX_ERROR): the problem is not scored", ds, p.task_id, errors)
                records.append({
                    "type": "exec", "dataset": ds, "task_id": p.task_id,
                    "n_codes": settings.k_code, "n_tests": settings.n_tests,
                    "n_gt": ran.gt_verdicts[i].shape[1],
                    "gen": verdict_rows(ran.gen_verdicts[i]),
                    "gt": verdict_rows(ran.gt_verdicts[i]),
                    "sandbox_errors": errors,
                    "sandbox_retried": i in ran.retried,
                })
            slog.append(records)
            bar.update(len(chunk))


def _faulted(rec: dict) -> bool:
    """The exec record holds a SANDBOX_ERROR cell: the problem is not scored (and redone)."""
    from sandbox import Verdict

    bad = str(int(Verdict.SANDBOX_ERROR))  # its character in the verdict rows
    return bool(rec.get("sandbox_errors")) or any(bad in row for row in rec["gen"] + rec["gt"])


def _exec_is_current(rec: dict | None, settings: EvalSettings, problem: Problem) -> bool:
    return (rec is not None and rec["n_codes"] == settings.k_code
            and rec["n_tests"] == settings.n_tests
            and rec["n_gt"] == len(gt_tests(problem, settings.max_gt_tests))
            and not _faulted(rec))


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
    periodic evaluation); BoN entries become ``.../bon_NxM`` (``.../bon_accumulate_NxM``);
    undefined (None) rates and text (the protocol's name) are left out."""
    out: dict[str, float] = {}
    for ds, r in metrics.items():
        for k, v in r.items():
            if isinstance(v, Mapping):
                out.update({f"{prefix}/{ds}/{k}_{nm}": float(a) for nm, a in v.items()
                            if a is not None})
            elif v is not None and not isinstance(v, str):
                out[f"{prefix}/{ds}/{k}"] = float(v)
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
        "prompts": {k: (str(v) if v is not None else None)
                    for k, v in dataclasses.asdict(prompt_config).items()},
        "max_gt_tests": settings.max_gt_tests,
    }
    check_run_file(out, fingerprint)
    if sandbox_factory is None:
        from sandbox import Limits, Sandbox

        sandbox_factory = lambda: Sandbox(limits=Limits())

    with SampleLog(out / SAMPLES_FILE) as slog:
        built: dict[str, Any] = {}  # one engine per distinct model, shared by both roles
        try:
            plan = [("code", coder, settings.k_code)]
            if not settings.single_eval:
                plan.append(("test", tester, settings.k_case))
            for kind, spec, k in plan:
                missing = [(ds, p, idx) for ds, problems in datasets.items() for p in problems
                           if (idx := [i for i in range(k)
                                       if (ds, p.task_id, kind, i) not in slog.samples])]
                if not missing:
                    continue  # nothing to draw: the engine is not even started
                key = json.dumps([spec.public(), spec.api and spec.api.url], sort_keys=True)
                if key not in built:
                    lent = engine if engine is not None and spec == coder else None
                    if spec.engine == "api":
                        built[key] = ApiRole(spec, prompt_config, settings.gen_batch)
                    else:
                        if lent is None:  # an Orbax checkpoint becomes a HF dir in out_dir
                            spec = dataclasses.replace(spec, model=ensure_hf_model(
                                spec.model, out / "converted" / pathlib.Path(spec.model).name,
                                base_model=spec.base_model))
                        built[key] = LocalRole(spec, prompt_config, settings.gen_batch,
                                                engine_factory, engine=lent)
                role = built[key]
                wants = [Want(ds, p, kind, role.prompt(p, kind, show_example), idx)
                         for ds, p, idx in missing]
                _generate(role, wants, sampling, slog, f"generate {kind}s ({spec.label})", progress)
        finally:
            for role in built.values():
                role.close()

        jobs = [(ds, p) for ds, problems in datasets.items() for p in problems
                if not _exec_is_current(slog.execs.get((ds, p.task_id)), settings, p)]
        _execute(jobs, slog, settings, sandbox_factory, progress)

        result = {}
        for ds, problems in datasets.items():
            bad = {p.task_id for p in problems if _faulted(slog.execs[(ds, p.task_id)])}
            if bad:
                log.warning("%s: %d of %d problems not scored: their execution failed inside "
                            "the sandbox (SANDBOX_ERROR after a retry)", ds, len(bad), len(problems))
            result[ds] = dataset_metrics((problem_table(slog, ds, p, settings) for p in problems
                                          if p.task_id not in bad), sandbox_errors=len(bad),
                                         protocol=settings.protocol)
    if reports:
        model = coder.label if tester is coder or settings.single_eval else \
            f"{coder.label} + {tester.label} (tester)"
        write_reports(result, out, model=model, bon=settings.bon, single_eval=settings.single_eval,
                      note=f"{settings.describe()}; {sampling.max_tokens} new tokens at most, "
                           f"prompts {prompt_config.mode}.")
    return result
