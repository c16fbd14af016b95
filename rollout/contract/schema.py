"""The experience schema: what one batch of rollout rows is, defined once for both sides.

One row per response (a response is one generated program or one generated unit test):

- ``tokens`` int32 [N, L]: prompt followed by response, right-padded;
- ``prompt_len``, ``response_len`` int32 [N];
- ``rollout_logprobs`` float32 [N, L]: log-probs of the response tokens under the rollout
  policy, 0 elsewhere;
- ``advantage`` float32 [N]: the CURE reward after its per-problem normalisation;
- ``kind`` int8 [N] (:data:`KIND_CODE` or :data:`KIND_TEST`), ``problem_id`` int32 [N],
  ``policy_version`` int32 [N] (the weights that sampled the row), ``reward`` float32 [N];
- ``has_signal`` int8 [N]: 0 for a row whose group carries no signal (advantage 0). Such rows
  are kept and marked; the learner's side decides whether to train on them, so the learner
  itself takes every field but this one (:data:`LEARNER_FIELDS`).

The rollout server checks every batch with :func:`check_rows` before it crosses into shared
memory, and the learner's batch type takes its fields from here.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "FIELDS",
    "KIND_CODE",
    "KIND_TEST",
    "LEARNER_FIELDS",
    "NDIM",
    "SchemaError",
    "check_rows",
]

KIND_CODE = 0
KIND_TEST = 1

# name -> dtype of every array of an experience batch, in row order of DESIGN.md.
FIELDS: dict[str, np.dtype] = {
    "tokens": np.dtype(np.int32),
    "prompt_len": np.dtype(np.int32),
    "response_len": np.dtype(np.int32),
    "rollout_logprobs": np.dtype(np.float32),
    "advantage": np.dtype(np.float32),
    "kind": np.dtype(np.int8),
    "problem_id": np.dtype(np.int32),
    "policy_version": np.dtype(np.int32),
    "reward": np.dtype(np.float32),
    "has_signal": np.dtype(np.int8),
}
# name -> number of dimensions: [N, L] for the per-token fields, [N] for the rest.
NDIM: dict[str, int] = {k: 2 if k in ("tokens", "rollout_logprobs") else 1 for k in FIELDS}
# The fields the learner trains on (everything but has_signal).
LEARNER_FIELDS: tuple[str, ...] = tuple(k for k in FIELDS if k != "has_signal")


class SchemaError(ValueError):
    """An experience batch that breaks the schema (one line naming the field)."""


def check_rows(arrays: Mapping[str, Any], fields: Iterable[str] = FIELDS) -> int:
    """Check ``arrays`` holds exactly ``fields`` (default: all of :data:`FIELDS`), each with
    its dtype and number of dimensions, the same number of rows, and the per-token fields
    as wide as ``tokens``. Returns the number of rows; raises :class:`SchemaError`."""
    want = list(fields)
    for name in want:
        if name not in FIELDS:
            raise SchemaError(f"experience.{name}: not a schema field (known: "
                              f"{', '.join(FIELDS)})")
    for name in arrays:
        if name not in want:
            raise SchemaError(f"experience.{name}: unexpected field (expected: "
                              f"{', '.join(want)})")
    rows = width = None
    wide = ""
    for name in want:
        if name not in arrays:
            raise SchemaError(f"experience.{name}: missing (got {', '.join(arrays) or 'nothing'})")
        a = arrays[name]
        dtype, shape = getattr(a, "dtype", None), getattr(a, "shape", None)
        if dtype is None or shape is None:
            raise SchemaError(f"experience.{name}: expected a numpy array, got "
                              f"{type(a).__name__}")
        if np.dtype(dtype) != FIELDS[name]:
            raise SchemaError(f"experience.{name}: dtype {np.dtype(dtype)}, expected "
                              f"{FIELDS[name]}")
        if len(shape) != NDIM[name]:
            raise SchemaError(f"experience.{name}: shape {tuple(shape)}, expected "
                              f"{NDIM[name]} dims")
        if rows is None:
            rows = int(shape[0])
        elif shape[0] != rows:
            raise SchemaError(f"experience.{name}: {shape[0]} rows, expected {rows} (as "
                              f"{want[0]})")
        if NDIM[name] == 2:
            if width is None:
                width, wide = int(shape[1]), name
            elif shape[1] != width:
                raise SchemaError(f"experience.{name}: width {shape[1]}, expected {width} "
                                  f"(as {wide})")
    return 0 if rows is None else rows
