"""The learner's experience batch (one row per response), its validation, length bucketing
and placement onto the mesh (every host feeds its own rows).

Its fields, dtypes and ranks are those of the experience schema (``rollout.contract.schema``,
the training fields: every one but ``has_signal``); this module adds the value checks the
learner relies on.

Row i holds a prompt followed by a response, right-padded:
  tokens[i, :P_i]            prompt        (P_i = prompt_len[i] >= 1)
  tokens[i, P_i : P_i + R_i] response      (R_i = response_len[i])
  rollout_logprobs[i, t]     log mu(tokens[i, t] | tokens[i, :t]) for response positions t, 0 elsewhere
The loss mask is 1 exactly on the response positions.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from rollout.contract import schema

# name -> (dtype, ndim) of every training field, from the schema.
FIELDS: dict[str, tuple[Any, int]] = {k: (schema.FIELDS[k], schema.NDIM[k])
                                      for k in schema.LEARNER_FIELDS}


class ExperienceError(ValueError):
    """An experience batch that breaks the contract (message names the field and row)."""


@dataclasses.dataclass(frozen=True)
class ExperienceBatch:
    """Host-side (numpy) experience; validated at construction."""
    tokens: np.ndarray
    prompt_len: np.ndarray
    response_len: np.ndarray
    rollout_logprobs: np.ndarray
    advantage: np.ndarray
    kind: np.ndarray
    problem_id: np.ndarray
    policy_version: np.ndarray
    reward: np.ndarray

    def __post_init__(self) -> None:
        for name, (dtype, ndim) in FIELDS.items():
            arr = np.asarray(getattr(self, name))
            if arr.ndim != ndim:
                raise ExperienceError(f"experience.{name}: expected {ndim} dims, got shape {arr.shape}")
            if np.issubdtype(np.dtype(dtype), np.integer) and not np.issubdtype(arr.dtype, np.integer):
                raise ExperienceError(f"experience.{name}: expected integers, got dtype {arr.dtype}")
            object.__setattr__(self, name, np.ascontiguousarray(arr, dtype=dtype))
        n, length = self.tokens.shape
        for name in FIELDS:
            arr = getattr(self, name)
            if arr.shape[0] != n:
                raise ExperienceError(f"experience.{name}: {arr.shape[0]} rows, tokens has {n}")
        if self.rollout_logprobs.shape != (n, length):
            raise ExperienceError(f"experience.rollout_logprobs: shape {self.rollout_logprobs.shape}, "
                                  f"expected {(n, length)}")
        bad = np.nonzero(self.prompt_len < 1)[0]
        if bad.size:
            raise ExperienceError(f"experience.prompt_len: row {bad[0]} is {self.prompt_len[bad[0]]}, must be >= 1")
        bad = np.nonzero(self.response_len < 0)[0]
        if bad.size:
            raise ExperienceError(f"experience.response_len: row {bad[0]} is negative")
        bad = np.nonzero(self.prompt_len + self.response_len > length)[0]
        if bad.size:
            i = bad[0]
            raise ExperienceError(f"experience.response_len: row {i}: prompt_len {self.prompt_len[i]} + "
                                  f"response_len {self.response_len[i]} > length {length}")
        for name in ("advantage", "reward"):
            bad = np.nonzero(~np.isfinite(getattr(self, name)))[0]
            if bad.size:
                raise ExperienceError(f"experience.{name}: row {bad[0]} is not finite")
        mask = self.response_mask()
        bad_rows = np.nonzero(~np.isfinite(self.rollout_logprobs).all(axis=1) | ((self.rollout_logprobs > 1e-4) & (mask > 0)).any(axis=1))[0]
        if bad_rows.size:
            raise ExperienceError(f"experience.rollout_logprobs: row {bad_rows[0]} has non-finite or positive log-probs")
        if (self.tokens < 0).any():
            raise ExperienceError(f"experience.tokens: row {np.nonzero((self.tokens < 0).any(1))[0][0]} has negative ids")

    # ---------------------------------------------------------------- views
    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    def total_len(self) -> np.ndarray:
        return self.prompt_len + self.response_len

    def response_mask(self) -> np.ndarray:
        """float32 [N, L]: 1 where P_i <= t < P_i + R_i."""
        t = np.arange(self.length)[None, :]
        return ((t >= self.prompt_len[:, None]) & (t < self.total_len()[:, None])).astype(np.float32)

    def attention_mask(self) -> np.ndarray:
        """int32 [N, L]: 1 on real (prompt or response) tokens."""
        t = np.arange(self.length)[None, :]
        return (t < self.total_len()[:, None]).astype(np.int32)

    def select(self, rows: Sequence[int] | np.ndarray) -> ExperienceBatch:
        rows = np.asarray(rows)
        return ExperienceBatch(**{k: getattr(self, k)[rows] for k in FIELDS})

    def with_length(self, length: int) -> ExperienceBatch:
        """Right-pad or trim the length axis (trimming only removes padding)."""
        if length < int(self.total_len().max(initial=1)):
            raise ExperienceError(f"experience: cannot trim to length {length} < longest row")
        cur = self.length
        def fix(a):
            if length <= cur:
                return a[:, :length]
            return np.pad(a, ((0, 0), (0, length - cur)))
        d = {k: getattr(self, k) for k in FIELDS}
        d["tokens"], d["rollout_logprobs"] = fix(self.tokens), fix(self.rollout_logprobs)
        return ExperienceBatch(**d)

    def bucketed(self, multiple: int) -> ExperienceBatch:
        """Trim/pad the length to the smallest multiple of `multiple` holding every row."""
        need = int(self.total_len().max(initial=1))
        return self.with_length(max(multiple, -(-need // multiple) * multiple))

    def pad_rows(self, multiple: int) -> ExperienceBatch:
        """Append empty rows up to a multiple of `multiple` rows (see `pad_rows_to`)."""
        return self.pad_rows_to(self.num_rows + (-self.num_rows) % multiple)

    def pad_rows_to(self, rows: int) -> ExperienceBatch:
        """Append empty rows (prompt_len 1, response_len 0, advantage 0) up to `rows` rows.

        Empty rows carry no loss (their mask is all zero) and do not count as sequences."""
        extra = rows - self.num_rows
        if extra < 0:
            raise ExperienceError(f"experience: cannot pad {self.num_rows} rows to {rows}")
        if extra == 0:
            return self
        d = {}
        for k, (dtype, ndim) in FIELDS.items():
            a = getattr(self, k)
            pad = np.zeros((extra,) + a.shape[1:], dtype)
            if k == "prompt_len":
                pad[:] = 1
            if k == "policy_version":
                pad[:] = a.max(initial=0)
            d[k] = np.concatenate([a, pad])
        return ExperienceBatch(**d)

    @classmethod
    def empty(cls, length: int = 1) -> ExperienceBatch:
        """A batch of no rows (a process whose rollout kept nothing this step)."""
        return cls(**{k: np.zeros((0, length) if ndim == 2 else (0,), dtype)
                      for k, (dtype, ndim) in FIELDS.items()})

    def to_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in FIELDS}

    @classmethod
    def concatenate(cls, batches: Sequence[ExperienceBatch]) -> ExperienceBatch:
        length = max(b.length for b in batches)
        bs = [b.with_length(length) for b in batches]
        return cls(**{k: np.concatenate([getattr(b, k) for b in bs]) for k in FIELDS})


if tuple(f.name for f in dataclasses.fields(ExperienceBatch)) != schema.LEARNER_FIELDS:
    raise ImportError("cure_jax.experience.ExperienceBatch: its fields differ from "
                      "rollout.contract.schema.LEARNER_FIELDS")


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded over its leading axis, in row order (each row
    once: replicated copies are skipped)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    seen: dict[int, np.ndarray] = {}
    for shard in x.addressable_shards:
        start = shard.index[0].start or 0
        if start not in seen:
            seen[start] = np.asarray(shard.data)
    return np.concatenate([seen[k] for k in sorted(seen)])


def place(local: dict[str, np.ndarray], sharding_2d: jax.sharding.NamedSharding,
          global_rows: int) -> dict[str, jax.Array]:
    """Host-local rows -> global jax.Arrays sharded over the batch axis (multi-host safe).

    `local` holds this host's rows only (its block of the global rows, see cure_jax.row_plan);
    1-D fields use the 2-D sharding's leading axis.
    """
    mesh, spec = sharding_2d.mesh, sharding_2d.spec
    out = {}
    for k, v in local.items():
        sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec[: v.ndim]))
        out[k] = jax.make_array_from_process_local_data(sh, v, (global_rows,) + v.shape[1:])
    return out
