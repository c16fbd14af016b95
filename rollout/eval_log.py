"""The crash-tolerant record of a ``cure-eval`` run: ``samples.jsonl`` and ``run.json``.

Every sample and every problem's execution matrix is appended to ``samples.jsonl`` the moment
it exists (flushed and fsynced per batch), so an interrupted run loses nothing that finished
and a re-run only does what is missing. ``run.json`` fingerprints the settings that change
results (models, sampling, prompts); resuming with other ones is refused with the fields named.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from rollout.eval_settings import EvalError
from rollout.execution import NOT_RUN
from rollout.parsing import ParsedTest

__all__ = ["NOT_RUN_CHAR", "RUN_FILE", "SAMPLES_FILE", "SampleLog", "check_run_file",
           "exec_is_current", "exec_record", "faulted", "passed_table", "verdict_rows"]

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"
NOT_RUN_CHAR = "-"  # verdict character of a cell never executed (an unparsed code or test)


class SampleLog:
    """Append-only JSONL file of sample and execution records, crash-tolerant.

    Records: ``{"type": "sample", "dataset", "task_id", "kind", "index", ...}`` (kind "code",
    "test", or "repair-<round>"), ``{"type": "exec", "dataset", "task_id", "n_codes", "n_tests",
    "gen", "gt", ...}`` (:func:`exec_record`), and the refinement rounds' (rollout.refine)
    ``{"type": "feedback", "dataset", "task_id", "round", ...}`` and ``{"type": "repair",
    "round", ...}`` (an exec record of the round's candidates).
    A final line without its newline (a crash mid-write) is cut off when the file is opened;
    a malformed line anywhere else is an error naming the line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        self.samples: dict[tuple[str, str, str, int], dict] = {}
        self.execs: dict[tuple[str, str], dict] = {}
        self.feedback: dict[tuple[str, str, int], dict] = {}
        self.repairs: dict[tuple[str, str, int], dict] = {}
        self._load()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held until close()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":  # a crash mid-write: cut back to the last full line
                    step, pos = 1 << 16, size
                    while pos > 0:
                        pos = max(0, pos - step)
                        fh.seek(pos)
                        cut = fh.read(min(step, size - pos)).rfind(b"\n")
                        if cut >= 0:
                            pos += cut + 1
                            break
                    log.warning("%s: dropping a partial last line (%d bytes) left by an "
                                "interruption", self.path, size - pos)
                    fh.truncate(pos)
            fh.seek(0)
            for lineno, line in enumerate(fh, 1):  # streamed: the file may be large
                if not line.strip():
                    continue
                try:
                    self._index(json.loads(line))
                except (ValueError, KeyError, TypeError) as e:
                    raise EvalError(f"{self.path}, line {lineno}: not a valid record ({e})") from None

    def _index(self, rec: dict) -> None:
        if rec["type"] == "sample":
            # The response text stays on disk only; memory keeps what scoring needs.
            slim = {k: v for k, v in rec.items() if k != "response"}
            self.samples[(rec["dataset"], rec["task_id"], rec["kind"], int(rec["index"]))] = slim
        elif rec["type"] == "exec":
            self.execs[(rec["dataset"], rec["task_id"])] = rec
        elif rec["type"] in ("feedback", "repair"):
            table = self.feedback if rec["type"] == "feedback" else self.repairs
            table[(rec["dataset"], rec["task_id"], int(rec["round"]))] = rec
        else:
            raise KeyError(f"unknown type {rec['type']!r}")

    def codes(self, dataset: str, task_id: str, kind: str, n: int) -> list[str | None]:
        """The parsed programs (None: unparsed) of samples 0..n-1 of ``kind`` ("code" or a
        repair round's) of one problem."""
        return [self.samples[(dataset, task_id, kind, i)]["code"] for i in range(n)]

    def tests(self, dataset: str, task_id: str, n: int) -> list[ParsedTest]:
        """The parsed generated tests 0..n-1 of one problem (unparsed ones not ``ok``)."""
        return [ParsedTest(t["test_input"], t["test_output"])
                for t in (self.samples[(dataset, task_id, "test", k)] for k in range(n))]

    def append(self, records: Sequence[dict]) -> None:
        """Writes ``records`` and makes them durable (flush + fsync) before returning."""
        if not records:
            return
        self._fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        for r in records:
            self._index(r)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_run_file(out_dir: pathlib.Path, fingerprint: dict, optional: Sequence[str] = ()) -> None:
    """Writes run.json, or checks that a resumed run used the same settings.

    ``optional``: keys compared only when both runs have them (a later stage, such as the
    refinement rounds, may be added to a finished run: run.json then gains the key)."""
    path = out_dir / RUN_FILE
    new = {k: v for k, v in fingerprint.items() if not (k in optional and v is None)}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise EvalError(f"{path}: unreadable ({e}); use a new out_dir") from None
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
                and not (k in optional and (k not in old or k not in new))]
        if diff:
            raise EvalError(f"{out_dir} holds a run with other settings ({', '.join(diff)} differ: "
                            f"was {json.dumps({k: old.get(k) for k in diff})}); "
                            "use a new out_dir or the same settings to resume")
        if not set(new) - set(old):
            return
        new = old | new
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def exec_record(ran: Any, i: int, dataset: str, task_id: str, n_codes: int, n_tests: int) -> dict:
    """The record of problem ``i`` of a ``rollout.execution.Execution``: its verdict rows over
    the generated (``gen``) and ground-truth (``gt``) tests and its sandbox faults."""
    errors = ran.sandbox_errors(i)
    if errors:
        log.warning("%s/%s: %d executions failed inside the sandbox after a retry "
                    "(SANDBOX_ERROR): not scored", dataset, task_id, errors)
    return {"type": "exec", "dataset": dataset, "task_id": task_id, "n_codes": n_codes,
            "n_tests": n_tests, "n_gt": ran.gt_verdicts[i].shape[1],
            "gen": verdict_rows(ran.gen_verdicts[i]), "gt": verdict_rows(ran.gt_verdicts[i]),
            "sandbox_errors": errors, "sandbox_retried": i in ran.retried}


def exec_is_current(rec: dict | None, n_codes: int, n_tests: int, n_gt: int) -> bool:
    """The exec (or repair) record exists, has the table's shape and no sandbox fault: it
    needs no new execution."""
    return (rec is not None and rec["n_codes"] == n_codes and rec["n_tests"] == n_tests
            and rec["n_gt"] == n_gt and not faulted(rec))


def faulted(rec: dict) -> bool:
    """The exec record holds a SANDBOX_ERROR cell: the problem is not scored (and redone)."""
    from sandbox import Verdict

    bad = str(int(Verdict.SANDBOX_ERROR))  # its character in the verdict rows
    return bool(rec.get("sandbox_errors")) or any(bad in row for row in rec["gen"] + rec["gt"])


def verdict_rows(verdicts: np.ndarray) -> list[str]:
    """An exec record's verdict table: one string per code, one character per test: the digit
    of ``sandbox.Verdict`` for executed cells (0 is OK), ``-`` for cells never run."""
    return ["".join(NOT_RUN_CHAR if int(x) == NOT_RUN else str(int(x)) for x in row)
            for row in verdicts]


def passed_table(rows: list[str], n: int, m: int) -> np.ndarray:
    """bool [n, m] pass table of an exec record's verdict strings (:func:`verdict_rows`)."""
    out = np.zeros((n, m), dtype=bool)
    for r, row in enumerate(rows):
        out[r] = [ch == "0" for ch in row]
    return out
