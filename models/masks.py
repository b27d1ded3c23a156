"""Attention masks as data: the one place that decides who may attend to whom.

Every mask here is a boolean array `[B, 1, L, L]` (query rows, key columns, one head axis to
broadcast over heads) where True means "may attend". Blocks receive a mask and never decide
causality themselves; the GPT/BERT difference is the `kind` passed here.

One rule covers causal, bidirectional and prefix-LM attention:

    allowed(q, k) = (k <= q or (bidir[q] and bidir[k])) and segment[q] == segment[k]

where `bidir` marks tokens that see each other in both directions: nothing for a causal
decoder, everything for an encoder, and the prefix for a prefix LM. Segment ids implement both
padding (id 0) and packing (documents with different ids never see each other).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

MaskKind = Literal["causal", "bidirectional", "prefix"]
MASK_KINDS: tuple[str, ...] = ("causal", "bidirectional", "prefix")


def make_attention_mask(
    kind: MaskKind | str,
    segment_ids_BL: jnp.ndarray,
    *,
    prefix_BL: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Builds the `[B, 1, L, L]` boolean attention mask.

    Args:
      kind: "causal", "bidirectional" or "prefix".
      segment_ids_BL: int ids; 0 is padding, equal non-zero ids form one document.
      prefix_BL: bool, True on prefix tokens; required for (and only used by) "prefix".
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind {kind!r} is not one of {MASK_KINDS}")
    if kind == "prefix" and prefix_BL is None:
        raise ValueError("a 'prefix' mask needs prefix_BL marking the bidirectional prefix")
    B, L = segment_ids_BL.shape
    if kind == "causal":
        bidir_BL = jnp.zeros((B, L), bool)
    elif kind == "bidirectional":
        bidir_BL = jnp.ones((B, L), bool)
    else:
        bidir_BL = prefix_BL.astype(bool)

    idx = jnp.arange(L)
    causal_LL = idx[None, :] <= idx[:, None]
    both_bidir_BLL = bidir_BL[:, :, None] & bidir_BL[:, None, :]
    same_segment_BLL = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
    real_key_BL = segment_ids_BL != 0
    mask_BLL = (causal_LL[None] | both_bidir_BLL) & same_segment_BLL & real_key_BL[:, None, :]
    # A padding query would otherwise have no key at all; letting it see itself keeps the
    # softmax well defined and changes nothing for real tokens (padding is never a target).
    mask_BLL = mask_BLL | (jnp.eye(L, dtype=bool)[None] & ~real_key_BL[:, :, None])
    return mask_BLL[:, None, :, :]


# Causal attention skips the key blocks its mask forbids in chunks of at least this many queries,
# up to this many chunks: on XLA:CPU 4 chunks of 64 cut one layer's attention (16 x 256 tokens,
# forward and backward) from 85 to 61 ms; 2 gave 64, 8 gave 61; in the whole GPT step 4 chunks
# were also the fastest (docs/performance.md).
MIN_QUERY_CHUNK, MAX_QUERY_CHUNKS = 64, 4


def key_limits(kind: MaskKind | str, seq_len: int) -> tuple[int, ...] | None:
    """What `make_attention_mask(kind, ...)` guarantees about `seq_len` tokens, as static bounds
    an attention may use to skip work: split the queries into `len(limits)` equal chunks, and no
    query of chunk i is allowed a key at index `limits[i]` or later.

    A causal mask gives chunk i the keys up to its own end (so the blocks above the diagonal
    are never computed); any other kind lets a query see later keys, so it gives None (no
    bound), as does a length that does not split into chunks of `MIN_QUERY_CHUNK` or more.
    The bound only skips keys the mask forbids: the mask is applied to every key kept.
    """
    chunks = min(MAX_QUERY_CHUNKS, seq_len // MIN_QUERY_CHUNK)
    if kind != "causal" or chunks < 2 or seq_len % chunks:
        return None
    return tuple(seq_len // chunks * (i + 1) for i in range(chunks))


def make_cache_mask(
    valid_BS: jnp.ndarray,
    start: jnp.ndarray | int,
    num_queries: int,
    *,
    prefix_BT: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """`[B, 1, T, S]` mask for T new tokens at slots start..start+T-1 of an S-slot KV cache.

    The rule of `make_attention_mask` restated over cache slots: query slot q sees key slot k
    when (k <= q, or both are bidirectional-prefix tokens) and k holds a real token
    (`valid_BS`); a padding query sees itself only. `prefix_BT` marks new tokens that form a
    bidirectional prefix (a prefix LM's prompt, prefilled in one call); later tokens are causal.
    """
    B, S = valid_BS.shape
    q_T = start + jnp.arange(num_queries)
    k_S = jnp.arange(S)
    see_BTS = jnp.broadcast_to(k_S[None, :] <= q_T[:, None], (B, num_queries, S))
    if prefix_BT is not None:
        prefix_BS = jax.lax.dynamic_update_slice_in_dim(
            jnp.zeros((B, S), bool), prefix_BT.astype(bool), start, axis=1
        )
        see_BTS = see_BTS | (prefix_BT.astype(bool)[:, :, None] & prefix_BS[:, None, :])
    self_TS = k_S[None, :] == q_T[:, None]
    mask_BTS = see_BTS & (valid_BS[:, None, :] | self_TS[None])
    return mask_BTS[:, None, :, :]


def make_cross_mask(q_segment_ids_BT: jnp.ndarray, kv_segment_ids_BS: jnp.ndarray) -> jnp.ndarray:
    """`[B, 1, T, S]` mask for cross-attention: decoder queries over encoder keys.

    A query sees every real key of its own example (same segment id): no causality, since the
    whole source is known before decoding starts. A padding query (id 0) sees every key, which
    keeps its softmax defined; it is never scored.
    """
    same_BTS = q_segment_ids_BT[:, :, None] == kv_segment_ids_BS[:, None, :]
    real_key_BS = kv_segment_ids_BS != 0
    pad_query_BT = q_segment_ids_BT == 0
    mask_BTS = (same_BTS & real_key_BS[:, None, :]) | pad_query_BT[:, :, None]
    return mask_BTS[:, None, :, :]
