"""Per-token log-probabilities and entropies without materialising [batch, length, vocab] logits.

For a sequence x_0..x_{L-1} and final hidden states h_t, with head W [V, H] (E when tied) and
temperature T:

    z_t      = W h_{t-1} / T                         (float32)
    logp_t   = z_t[x_t] - logsumexp(z_t)             t >= 1,   logp_0 = 0
    H_t      = logsumexp(z_t) - sum_v softmax(z_t)_v z_t,v

The sequence is cut into chunks of `chunk_size` positions and `lax.map` walks them with a
rematerialised body (when there is more than one), so forward and backward hold the logits of
one chunk ([B, C, V]) at a time instead of [B, L, V]. With Qwen's 152k vocabulary a full float32
logits array for 4 x 4096 tokens is ~10 GB; one chunk of 256 positions is ~0.6 GB.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cure_jax import prompt_packing, sharding


def _chunk_stats(h: jax.Array, targets: jax.Array, w: jax.Array, temperature: float,
                 want_entropy: bool) -> tuple[jax.Array, jax.Array]:
    """h [B, C, H], targets [B, C], w [V, H] -> (logp [B, C], entropy [B, C]) in float32."""
    logits = jnp.einsum("bch,vh->bcv", h, w, preferred_element_type=jnp.float32)
    logits = sharding.constrain(logits, ("batch", "length", "act_vocab"))
    if temperature != 1.0:
        logits = logits / temperature
    lse = jax.nn.logsumexp(logits, axis=-1)
    if sharding.current_axis_size("tp") > 1:
        # Vocabulary split over "tp": a masked sum stays a local reduction + one all-reduce,
        # where a gather would first collect the chunk's logits on every device.
        vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
        picked = jnp.sum(jnp.where(vocab_ids == targets[..., None], logits, 0.0), axis=-1)
    else:
        picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    logp = picked - lse
    if want_entropy:
        probs = jnp.exp(logits - lse[..., None])
        entropy = lse - jnp.sum(probs * logits, axis=-1)
    else:
        entropy = jnp.zeros_like(logp)
    return logp, entropy


def _chunked_stats(h: jax.Array, targets: jax.Array, head: jax.Array, chunk_size: int,
                   temperature: float, want_entropy: bool) -> tuple[jax.Array, jax.Array]:
    """(logp, entropy) [B, N] of targets [B, N] given the hidden states h [B, N, H] that predict
    them, `chunk_size` positions at a time with a rematerialised body."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    b, n, hd = h.shape
    c = min(chunk_size, n)
    n_chunks = -(-n // c)
    pad = n_chunks * c - n
    if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    h = h.reshape(b, n_chunks, c, hd).swapaxes(0, 1)            # [n, B, C, H]
    targets = targets.reshape(b, n_chunks, c).swapaxes(0, 1)    # [n, B, C]
    head = head.astype(h.dtype)

    def body(args):
        hc, tc = args
        return _chunk_stats(hc, tc, head, temperature, want_entropy)

    # Several chunks: each chunk's logits are recomputed in the backward pass, so one chunk's are
    # alive at a time. One chunk: its logits are alive during its backward pass either way, and
    # recomputing them would only repeat the head's matmul.
    logp, ent = jax.lax.map(jax.checkpoint(body) if n_chunks > 1 else body, (h, targets))
    return (logp.swapaxes(0, 1).reshape(b, n_chunks * c)[:, :n],
            ent.swapaxes(0, 1).reshape(b, n_chunks * c)[:, :n])


def _masked(logp: jax.Array, ent: jax.Array, attention_mask: jax.Array | None,
            return_entropy: bool) -> tuple[jax.Array, jax.Array | None]:
    if attention_mask is not None:
        valid = attention_mask.astype(bool)
        logp = jnp.where(valid, logp, 0.0)
        ent = jnp.where(valid, ent, 0.0)
    return logp, (ent if return_entropy else None)


def logprobs_from_hidden(hidden: jax.Array, head: jax.Array, tokens: jax.Array,
                         attention_mask: jax.Array | None = None, *, chunk_size: int = 256,
                         return_entropy: bool = True, temperature: float = 1.0
                         ) -> tuple[jax.Array, jax.Array | None]:
    """Chunked log p(tokens[:, t] | tokens[:, :t]) from hidden [B, L, H] and head [V, H]."""
    b, l, _ = hidden.shape
    if l < 2:
        zeros = jnp.zeros((b, l), jnp.float32)
        return zeros, (zeros if return_entropy else None)
    logp, ent = _chunked_stats(hidden[:, :-1], jnp.asarray(tokens, jnp.int32)[:, 1:], head,
                               chunk_size, temperature, return_entropy)
    zero = jnp.zeros((b, 1), jnp.float32)
    return _masked(jnp.concatenate([zero, logp], axis=1), jnp.concatenate([zero, ent], axis=1),
                   attention_mask, return_entropy)


def token_logprobs(model, tokens: jax.Array, attention_mask: jax.Array | None = None,
                   positions: jax.Array | None = None, *, packed: dict[str, jax.Array] | None = None,
                   shards: int = 1, at: jax.Array | None = None, chunk_size: int = 256,
                   return_entropy: bool = True, temperature: float = 1.0
                   ) -> tuple[jax.Array, jax.Array | None]:
    """Run the policy and return (logp, entropy), both float32 [B, L].

    logp[:, t] = log p(tokens[:, t] | tokens[:, :t]) for t >= 1 and 0 at t = 0 and at padded
    positions (attention_mask == 0); entropy likewise (None unless return_entropy).
    With ``packed`` (cure_jax.prompt_packing, ``shards`` data-parallel blocks) the model runs on
    the rows' packed prompts and responses instead, and the result is the same.
    With ``at`` (int [B, W], positions >= 1; L marks an unused slot) the head runs on those W
    positions of each row only (the responses: prompts are most of a row's positions, and the
    [V, H] head is the dearest matmul of a small model) and every other position is 0.
    """
    b, length = tokens.shape
    src = None if at is None else jnp.clip(at - 1, 0, length - 1)  # hidden states that predict `at`
    if packed is None:
        hidden = model(tokens, positions=positions, attention_mask=attention_mask)
        if src is not None:
            hidden = jnp.take_along_axis(hidden, src[..., None], axis=1)
    else:
        index = None if src is None else jnp.take_along_axis(packed[prompt_packing.INDEX_KEY],
                                                              src, axis=1)
        hidden = prompt_packing.unpacked_hidden(model, packed, shards, index=index)
    if at is None:
        return logprobs_from_hidden(hidden, model.head_weight(), tokens, attention_mask,
                                    chunk_size=chunk_size, return_entropy=return_entropy,
                                    temperature=temperature)
    targets = jnp.take_along_axis(jnp.asarray(tokens, jnp.int32), jnp.clip(at, 0, length - 1),
                                  axis=1)
    logp, ent = _chunked_stats(hidden, targets, model.head_weight(), chunk_size, temperature,
                               return_entropy)
    row = jnp.arange(b)[:, None]
    zeros = jnp.zeros((b, length), jnp.float32)
    return _masked(zeros.at[row, at].set(logp, mode="drop"),
                   zeros.at[row, at].set(ent, mode="drop"), attention_mask, return_entropy)
