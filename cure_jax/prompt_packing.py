"""Prompt sharing in the learner: the responses to one prompt run through the model together.

A CURE step samples k codes and k tests per problem, and every response of a group repeats its
prompt. With short responses (the tiny coder: prompts of ~210 tokens, responses of ~50) most of
the learner's tokens are prompt copies. With ``learner.share_prompts`` each device's rows of a
micro-batch are packed, one sequence per distinct prompt:

    packed    [prompt | response_1 | response_2 | ... | response_m | pad]
    segments   0 ...0   1 ...      2 ...            m ...          -1
    positions  0..P-1   P..P+R_1-1 P..P+R_2-1 ...                  0

and the model's attention lets a token see earlier tokens of its own segment and the prompt
(``Qwen(..., segment_ids=)``), so every response token gets the hidden state it has in its own
row. ``unpack_index`` then gathers the hidden states back into row layout ([rows, L], each row
prompt then response): log-probs, the loss and its aggregation run on rows exactly as without
packing, and the gradient is the same up to summation order.

Packing is per data-parallel block: the rows a device holds (a contiguous block of the
micro-batch) are packed into that device's own sequences, so the gather never crosses devices.
Every block has ``seqs`` sequences of ``length`` tokens (``cure_jax.row_plan`` picks both from
the rows' lengths, the same on every process). Dense [length, length] masks make this an option
for short responses; the cuDNN kernel takes no such mask.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax import sharding

# The packed arrays a micro-batch carries next to its row arrays (leading axis: sequences).
PACKED_KEYS: tuple[str, ...] = ("packed_tokens", "packed_positions", "packed_segments")
# The row array that maps each row position to its packed position (leading axis: rows).
INDEX_KEY = "unpack_index"


def prompt_groups(tokens: np.ndarray, prompt_len: np.ndarray) -> np.ndarray:
    """int64 [n]: rows with identical prompts share an id (numbered by first appearance)."""
    ids: dict[bytes, int] = {}
    out = np.empty(len(prompt_len), np.int64)
    for i, (row, p) in enumerate(zip(tokens, prompt_len)):
        out[i] = ids.setdefault(row[:int(p)].tobytes(), len(ids))
    return out


def _sequences(group: np.ndarray, prompt_len: np.ndarray, response_len: np.ndarray
               ) -> list[list[int]]:
    """The rows of one device block grouped by prompt (first appearance first); rows without
    tokens (padding rows) belong to none."""
    seqs: dict[int, list[int]] = {}
    for i, g in enumerate(group):
        if prompt_len[i] + response_len[i] > 0:
            seqs.setdefault(int(g), []).append(i)
    return list(seqs.values())


def block_shape(group: np.ndarray, prompt_len: np.ndarray, response_len: np.ndarray
                ) -> tuple[int, int]:
    """(sequences, longest packed sequence) of one device block's rows."""
    seqs = _sequences(group, prompt_len, response_len)
    longest = max((int(prompt_len[s[0]] + response_len[s].sum()) for s in seqs), default=0)
    return len(seqs), longest


@dataclasses.dataclass(frozen=True)
class PackedRows:
    """One process's rows of a micro-batch, packed per device block."""

    tokens: np.ndarray      # int32 [blocks * seqs, length]
    positions: np.ndarray   # int32 [blocks * seqs, length]
    segments: np.ndarray    # int32 [blocks * seqs, length]: 0 prompt, i response i, -1 pad
    index: np.ndarray       # int32 [rows, L]: row position -> position in its block's
    #                         flattened [seqs * length] sequences (0 past the row's end)

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(PACKED_KEYS + (INDEX_KEY,),
                        (self.tokens, self.positions, self.segments, self.index)))


def pack(tokens: np.ndarray, prompt_len: np.ndarray, response_len: np.ndarray,
         group: np.ndarray, blocks: int, seqs: int, length: int) -> PackedRows:
    """Pack rows (tokens [rows, L], prompt then response, rows a multiple of ``blocks``) into
    ``seqs`` sequences of ``length`` tokens per block of rows/blocks consecutive rows."""
    rows, width = tokens.shape
    if rows % blocks:
        raise ValueError(f"prompt packing: {rows} rows do not split into {blocks} device blocks")
    per = rows // blocks
    out_tok = np.zeros((blocks * seqs, length), np.int32)
    out_pos = np.zeros_like(out_tok)
    out_seg = np.full_like(out_tok, -1)
    index = np.zeros((rows, width), np.int32)
    for b in range(blocks):
        lo = b * per
        members = _sequences(group[lo:lo + per], prompt_len[lo:lo + per],
                             response_len[lo:lo + per])
        if len(members) > seqs:
            raise ValueError(f"prompt packing: device block {b} has {len(members)} prompts, "
                             f"planned for {seqs}")
        for s, rows_s in enumerate(members):
            seq = b * seqs + s
            base = s * length
            first = lo + rows_s[0]
            p = int(prompt_len[first])
            out_tok[seq, :p] = tokens[first, :p]
            out_pos[seq, :p] = np.arange(p)
            out_seg[seq, :p] = 0
            at = p
            for k, r in enumerate(rows_s, start=1):
                r = lo + r
                n = int(response_len[r])
                if at + n > length:
                    raise ValueError(f"prompt packing: device block {b} needs more than "
                                     f"{length} tokens for one prompt's responses")
                out_tok[seq, at:at + n] = tokens[r, p:p + n]
                out_pos[seq, at:at + n] = np.arange(p, p + n)
                out_seg[seq, at:at + n] = k
                index[r, :p] = base + np.arange(p)
                index[r, p:p + n] = base + np.arange(at, at + n)
                at += n
    return PackedRows(out_tok, out_pos, out_seg, index)


def unpacked_hidden(model, packed: dict[str, jax.Array], shards: int,
                    index: jax.Array | None = None) -> jax.Array:
    """Run ``model`` on the packed sequences and return hidden states in row layout
    [rows, L, H] (or [rows, W, H] at ``index``, a selection of the packed index's columns).
    ``shards``: the data-parallel blocks (each gathers from its own sequences)."""
    hidden = model(packed["packed_tokens"], positions=packed["packed_positions"],
                   segment_ids=packed["packed_segments"])
    n, length, h = hidden.shape
    hidden = sharding.constrain(hidden.reshape(shards, n // shards * length, h),
                                ("batch", None, "act_embed"))
    index = packed[INDEX_KEY] if index is None else index
    rows, width = index.shape
    index = sharding.constrain(index.reshape(shards, rows // shards * width), ("batch", None))
    out = jax.vmap(lambda hb, ib: jnp.take(hb, ib, axis=0))(hidden, index)
    return sharding.constrain(out.reshape(rows, width, h), ("batch", "length", "act_embed"))
