"""Which of its own experience rows each process feeds to each micro-batch of a learner step.

In a multi-process run every process holds only its own rows (those its rollout server made),
while a learner step is one SPMD program: every process must agree on the micro-batches (how
many, how many rows each process feeds, the length bucket). The rows' lengths and kinds (three ints
a row) are gathered once per update (`gather_rows`), and the plan is a pure function of them, so it
is the same on every process without moving a token.

Global row ids number the rows of process 0, then process 1, and so on; with one process they
are the batch's own row indices, and the plan is the single-process plan: rows ordered by
length, cut into micro-batches of `micro_batch_size`, each padded to the data-parallel size
and trimmed to its own length bucket.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cure_jax import distributed
from cure_jax.experience import ExperienceBatch


@dataclasses.dataclass(frozen=True)
class GlobalRows:
    """Lengths of every row of every process, and which process owns which rows."""

    prompt_len: np.ndarray     # [N] int64, global row order
    response_len: np.ndarray   # [N] int64
    kind: np.ndarray           # [N] int64, KIND_CODE or KIND_TEST
    counts: np.ndarray         # [P] rows per process
    process_index: int

    @property
    def num_rows(self) -> int:
        return int(self.counts.sum())

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)])

    @property
    def total_len(self) -> np.ndarray:
        return self.prompt_len + self.response_len

    def owner(self, rows: np.ndarray) -> np.ndarray:
        """Process index of each global row id."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def response_mask(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), max response]: ones on response tokens (for denominators)."""
        r = self.response_len[rows]
        return (np.arange(max(int(r.max(initial=0)), 1))[None] < r[:, None]).astype(np.float32)


def gather_rows(batch: ExperienceBatch) -> GlobalRows:
    """Every process's row lengths (a collective when multi-process)."""
    import jax
    parts = distributed.allgather_ints(np.concatenate([batch.prompt_len, batch.response_len,
                                                       batch.kind]))
    prompt, resp, kind = zip(*(np.split(a, 3) for a in parts))
    return GlobalRows(prompt_len=np.concatenate(prompt), response_len=np.concatenate(resp),
                      kind=np.concatenate(kind), counts=np.array([a.size for a in prompt], np.int64),
                      process_index=jax.process_index())


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """One micro-batch as this process feeds it."""

    local_rows: np.ndarray   # indices into this process's batch (may be empty)
    rows_per_process: int    # every process feeds this many rows (padded with empty rows)
    length: int              # the length bucket of the whole micro-batch


def plan(g: GlobalRows, rows: np.ndarray, micro_batch_size: int, local_dp: int,
         bucket: int) -> list[MicroBatch]:
    """Micro-batches over the global `rows` (e.g. one minibatch, in its order).

    Each process orders its share of `rows` by total length (stable) and cuts it into chunks of
    ceil(micro_batch_size / P) rows (all of its share when micro_batch_size is 0); micro-batch j
    is every process's chunk j, padded to a common row count (a multiple of `local_dp`, the
    data-parallel devices of one process) and to the smallest multiple of `bucket` holding its
    longest row."""
    nproc = len(g.counts)
    rows = np.asarray(rows, np.int64)
    owner = g.owner(rows)
    total = g.total_len
    shares = []
    for p in range(nproc):
        mine = rows[owner == p]
        shares.append(mine[np.argsort(total[mine], kind="stable")])
    size = micro_batch_size or max(max(len(s) for s in shares), 1)
    per = max(-(-size // nproc), local_dp)
    n_micro = max(-(-len(s) // per) for s in shares)
    out = []
    for j in range(n_micro):
        chunks = [s[j * per:(j + 1) * per] for s in shares]
        n = max(max(len(c) for c in chunks), 1)
        n = -(-n // local_dp) * local_dp
        longest = max(int(total[c].max(initial=1)) for c in chunks)
        length = max(bucket, -(-longest // bucket) * bucket)
        mine = chunks[g.process_index] - g.offsets[g.process_index]
        out.append(MicroBatch(local_rows=mine, rows_per_process=n, length=length))
    return out
