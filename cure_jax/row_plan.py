"""Which of its own experience rows each process feeds to each micro-batch of a learner step.

In a multi-process run every process holds only its own rows (those its rollout server made),
while a learner step is one SPMD program: every process must agree on the micro-batches (how
many, how many rows each process feeds, the length bucket). The rows' lengths and kinds (three ints
a row) are gathered once per update (`gather_rows`), and the plan is a pure function of them, so it
is the same on every process without moving a token.

Global row ids number the rows of process 0, then process 1, and so on; with one process they
are the batch's own row indices, and the plan is the single-process plan: rows ordered by
length, cut into micro-batches of `micro_batch_size`, each padded to the data-parallel size
and trimmed to its own length bucket. With shared prompts (cure_jax.prompt_packing) rows are
ordered by prompt, then length, and each micro-batch also gets the shape of its packed
sequences (per device block: how many, how long).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cure_jax import distributed, prompt_packing
from cure_jax.experience import ExperienceBatch


@dataclasses.dataclass(frozen=True)
class GlobalRows:
    """Lengths of every row of every process, and which process owns which rows."""

    prompt_len: np.ndarray     # [N] int64, global row order
    response_len: np.ndarray   # [N] int64
    kind: np.ndarray           # [N] int64, KIND_CODE or KIND_TEST
    group: np.ndarray          # [N] int64, rows of one process with one prompt share a group
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
    """Every process's row lengths, kinds and prompt groups (a collective when multi-process)."""
    import jax
    group = prompt_packing.prompt_groups(batch.tokens, batch.prompt_len)
    parts = distributed.allgather_ints(np.concatenate([batch.prompt_len, batch.response_len,
                                                       batch.kind, group]))
    prompt, resp, kind, group = zip(*(np.split(a, 4) for a in parts))
    return GlobalRows(prompt_len=np.concatenate(prompt), response_len=np.concatenate(resp),
                      kind=np.concatenate(kind), group=np.concatenate(group),
                      counts=np.array([a.size for a in prompt], np.int64),
                      process_index=jax.process_index())


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """One micro-batch as this process feeds it."""

    local_rows: np.ndarray   # indices into this process's batch (may be empty)
    rows_per_process: int    # every process feeds this many rows (padded with empty rows)
    length: int              # the length bucket of the whole micro-batch
    window: int              # response positions per row the head runs on
    packed_seqs: int = 0     # shared prompts: packed sequences per device block (0: not packed)
    packed_len: int = 0      # shared prompts: their length bucket


def plan(g: GlobalRows, rows: np.ndarray, micro_batch_size: int, local_dp: int,
         bucket: int, share_prompts: bool = False) -> list[MicroBatch]:
    """Micro-batches over the global `rows` (e.g. one minibatch, in its order).

    Each process orders its share of `rows` by total length (stable; by prompt group first when
    `share_prompts`) and cuts it into chunks of ceil(micro_batch_size / P) rows (all of its
    share when micro_batch_size is 0); micro-batch j is every process's chunk j, padded to a
    common row count (a multiple of `local_dp`, the data-parallel devices of one process) and to
    the smallest multiple of `bucket` (4 x `bucket` with `share_prompts`) holding its longest
    row. The response window (where the log-probs are computed) holds the longest response of
    the whole step: `bucket` times a power of two, at most the length. With `share_prompts` the
    packed sequences of every device block get one common count and length too."""
    nproc = len(g.counts)
    rows = np.asarray(rows, np.int64)
    owner = g.owner(rows)
    total = g.total_len
    shares = []
    for p in range(nproc):
        mine = rows[owner == p]
        order = (np.lexsort((total[mine], g.group[mine])) if share_prompts
                 else np.argsort(total[mine], kind="stable"))
        shares.append(mine[order])
    size = micro_batch_size or max(max(len(s) for s in shares), 1)
    per = max(-(-size // nproc), local_dp)
    n_micro = max(-(-len(s) // per) for s in shares)
    response = int(g.response_len.max(initial=1))  # one window for the whole step
    window_all = bucket << (-(-response // bucket) - 1).bit_length()
    out = []
    for j in range(n_micro):
        chunks = [s[j * per:(j + 1) * per] for s in shares]
        n = max(max(len(c) for c in chunks), 1)
        n = -(-n // local_dp) * local_dp
        longest = max(int(total[c].max(initial=1)) for c in chunks)
        # With shared prompts the row length no longer sets the model's work (the packed length
        # does), so it takes the packed lengths' coarse steps: fewer shapes, fewer compiles.
        step = 4 * bucket if share_prompts else bucket
        length = max(bucket, -(-longest // step) * step)
        window = min(window_all, length)
        mine = chunks[g.process_index] - g.offsets[g.process_index]
        seqs = packed_len = 0
        if share_prompts:
            # Coarse packed shapes (1, 2, 4, then multiples of 4 sequences; lengths in steps
            # of 4 buckets): a few compiled programs instead of one per micro-batch.
            seqs, longest = _packed_shape(g, chunks, n // local_dp)
            seqs = 1 << (seqs - 1).bit_length() if seqs <= 4 else -(-seqs // 4) * 4
            packed_len = -(-longest // (4 * bucket)) * 4 * bucket
        out.append(MicroBatch(local_rows=mine, rows_per_process=n, length=length, window=window,
                              packed_seqs=seqs, packed_len=packed_len))
    return out


def _packed_shape(g: GlobalRows, chunks: list[np.ndarray], per_block: int) -> tuple[int, int]:
    """(sequences, longest sequence) over every device block of every process's chunk."""
    seqs, longest = 1, 1
    for c in chunks:
        for lo in range(0, len(c), per_block):
            block = c[lo:lo + per_block]
            s, n = prompt_packing.block_shape(g.group[block], g.prompt_len[block],
                                              g.response_len[block])
            seqs, longest = max(seqs, s), max(longest, n)
    return seqs, longest


# The micro-batch key of each row's response positions ([rows, window] int32, see below).
RESPONSE_POSITIONS = "response_positions"


def response_positions(prompt_len: np.ndarray, response_len: np.ndarray, window: int,
                       length: int) -> np.ndarray:
    """int32 [rows, window]: each row's response token positions, then `length` (no position)
    in the slots its response does not fill; the head runs on these positions only."""
    j = np.arange(window)
    p = np.asarray(prompt_len, np.int64)[:, None]
    r = np.asarray(response_len, np.int64)[:, None]
    return np.where(j < r, p + j, length).astype(np.int32)
