"""The record of a cure-eval run (rollout.eval_log): a crash-tolerant samples.jsonl, the
run.json fingerprint check and the verdict strings of exec records."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rollout.eval_log import SampleLog, check_run_file, passed_table, verdict_rows
from rollout.eval_settings import EvalError
from rollout.execution import NOT_RUN


def test_sample_log_rejects_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"type": "exec"}\nnot json\n')
    with pytest.raises(EvalError, match=r"samples\.jsonl, line 1"):
        SampleLog(path)


def test_sample_log_cuts_a_partial_last_line_longer_than_a_read_block(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = {"type": "exec", "dataset": "d", "task_id": "t", "n_codes": 1}
    path.write_text(json.dumps(good) + "\n" + '{"type": "sample", "response": "' + "x" * 200_000)
    with SampleLog(path) as slog:
        assert slog.execs == {("d", "t"): good} and not slog.samples
        slog.append([{"type": "sample", "dataset": "d", "task_id": "t", "kind": "code",
                      "index": 0, "response": "r", "code": "print(1)\n"}])
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["response"] == "r"
    with SampleLog(path) as slog:
        assert slog.samples[("d", "t", "code", 0)]["code"] == "print(1)\n"


def test_verdict_rows_round_trip_to_the_pass_table():
    v = np.array([[0, 1, NOT_RUN], [NOT_RUN, NOT_RUN, NOT_RUN], [7, 0, 5]], np.int8)
    rows = verdict_rows(v)
    assert rows == ["01-", "---", "705"]
    np.testing.assert_array_equal(passed_table(rows, 3, 3), v == 0)
    assert verdict_rows(np.zeros((2, 0), np.int8)) == ["", ""]


def test_run_file_is_written_once_and_other_settings_are_named(tmp_path):
    check_run_file(tmp_path, {"a": 1, "b": [1, 2]})
    check_run_file(tmp_path, {"a": 1, "b": [1, 2]})  # the same settings resume
    with pytest.raises(EvalError, match=r"\(b differ: was \{\"b\": \[1, 2\]\}\)"):
        check_run_file(tmp_path, {"a": 1, "b": [3]})
