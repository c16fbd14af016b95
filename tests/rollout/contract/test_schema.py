"""rollout.contract.schema: a well-formed experience batch passes; a missing field, a wrong
dtype or rank, a row-count or width mismatch, or a stray field is one line naming the field."""
from __future__ import annotations

import numpy as np
import pytest

from rollout.contract.schema import (
    FIELDS,
    KIND_CODE,
    KIND_TEST,
    LEARNER_FIELDS,
    NDIM,
    SchemaError,
    check_rows,
)


def _batch(n: int = 3, length: int = 5) -> dict[str, np.ndarray]:
    out = {}
    for name, dt in FIELDS.items():
        shape = (n, length) if NDIM[name] == 2 else (n,)
        out[name] = np.zeros(shape, dt)
    out["kind"][:] = np.where(np.arange(n) % 2, KIND_TEST, KIND_CODE)
    return out


def _error(arrays, **kw) -> str:
    with pytest.raises(SchemaError) as err:
        check_rows(arrays, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_the_schema_itself():
    assert list(FIELDS)[:2] == ["tokens", "prompt_len"] and "has_signal" in FIELDS
    assert LEARNER_FIELDS == tuple(k for k in FIELDS if k != "has_signal")
    assert {k for k, d in NDIM.items() if d == 2} == {"tokens", "rollout_logprobs"}
    assert (KIND_CODE, KIND_TEST) == (0, 1)
    assert FIELDS["tokens"] == np.int32 and FIELDS["kind"] == np.int8
    assert FIELDS["rollout_logprobs"] == np.float32


def test_good_batches_pass():
    assert check_rows(_batch(3)) == 3
    assert check_rows(_batch(0, 0)) == 0
    train = {k: v for k, v in _batch(4).items() if k in LEARNER_FIELDS}
    assert check_rows(train, fields=LEARNER_FIELDS) == 4


def test_wrong_dtype_names_the_field():
    b = _batch()
    b["advantage"] = b["advantage"].astype(np.float64)
    msg = _error(b)
    assert msg.startswith("experience.advantage:") and "float64" in msg and "float32" in msg


def test_missing_field_names_it():
    b = _batch()
    del b["policy_version"]
    assert _error(b).startswith("experience.policy_version: missing")
    b = _batch()
    del b["has_signal"]
    assert _error(b).startswith("experience.has_signal: missing")


def test_row_and_width_mismatches_name_the_field():
    b = _batch(3)
    b["reward"] = np.zeros(4, np.float32)
    msg = _error(b)
    assert msg.startswith("experience.reward:") and "4 rows" in msg
    b = _batch(3, 5)
    b["rollout_logprobs"] = np.zeros((3, 6), np.float32)
    msg = _error(b)
    assert msg.startswith("experience.rollout_logprobs:") and "width 6" in msg
    b = _batch(3)
    b["kind"] = np.zeros((3, 1), np.int8)
    assert _error(b).startswith("experience.kind: shape (3, 1)")


def test_stray_or_unknown_fields_are_named():
    b = _batch()
    b["logits"] = np.zeros(3, np.float32)
    assert _error(b).startswith("experience.logits: unexpected field")
    assert _error(_batch(), fields=["tokens", "nope"]).startswith("experience.nope: not a")
    b = _batch()
    b["tokens"] = b["tokens"].tolist()
    assert _error(b).startswith("experience.tokens: expected a numpy array")
