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
from typing import Self

import numpy as np

from rollout.eval_settings import EvalError
from rollout.execution import NOT_RUN

__all__ = ["NOT_RUN_CHAR", "RUN_FILE", "SAMPLES_FILE", "SampleLog", "check_run_file",
           "passed_table", "verdict_rows"]

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"
NOT_RUN_CHAR = "-"  # verdict character of a cell never executed (an unparsed code or test)


class SampleLog:
    """Append-only JSONL file of sample and execution records, crash-tolerant.

    Records: ``{"type": "sample", "dataset", "task_id", "kind": "code"|"test", "index", ...}``
    and ``{"type": "exec", "dataset", "task_id", "n_codes", "n_tests", "gen", "gt", ...}``.
    A final line without its newline (a crash mid-write) is cut off when the file is opened;
    a malformed line anywhere else is an error naming the line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        self.samples: dict[tuple[str, str, str, int], dict] = {}
        self.execs: dict[tuple[str, str], dict] = {}
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
        else:
            raise KeyError(f"unknown type {rec['type']!r}")

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


def check_run_file(out_dir: pathlib.Path, fingerprint: dict) -> None:
    """Writes run.json, or checks that a resumed run used the same settings."""
    path = out_dir / RUN_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise EvalError(f"{path}: unreadable ({e}); use a new out_dir") from None
        diff = [k for k in sorted(set(old) | set(fingerprint)) if old.get(k) != fingerprint.get(k)]
        if diff:
            raise EvalError(f"{out_dir} holds a run with other settings ({', '.join(diff)} differ: "
                            f"was {json.dumps({k: old.get(k) for k in diff})}); "
                            "use a new out_dir or the same settings to resume")
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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
