"""Attention masks as data: the one place that decides who may attend to whom.

A mask is built here once, as its rule (`SegmentMask`: per-token ids, causal or not, each row's
bidirectional prefix), which fused attention kernels take as it is; `dense()` writes the same
rule out as a boolean array `[B, 1, L, L]` (query rows, key columns, one head axis to broadcast
over heads) where True means "may attend", which the written-out attention takes. Blocks
receive a mask and never decide causality themselves; the GPT/BERT difference is the `kind`
passed here.

One rule covers causal, bidirectional and prefix-LM attention:

    allowed(q, k) = (k <= q or (bidir[q] and bidir[k])) and segment[q] == segment[k]

where `bidir` marks tokens that see each other in both directions: nothing for a causal
decoder, everything for an encoder, and a leading run of the row (the prefix) for a prefix LM.
Segment ids implement both padding (id 0) and packing (documents with different ids never see
each other).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import struct

MaskKind = Literal["causal", "bidirectional", "prefix"]
MASK_KINDS: tuple[str, ...] = ("causal", "bidirectional", "prefix")


@struct.dataclass
class SegmentMask:
    """An attention mask as its rule and the ids it compares: the form fused attention kernels
    take (models/fused_attention.py); `dense()` writes out the same mask as booleans.

    Query q of a row may attend to key k when

        q_ids[q] == kv_ids[k] and (not causal or k <= q or (q < prefix_len and k < prefix_len))

    Ids are the segment ids with every padding position given an id of its own (-1 - its index),
    so a padding token is seen by no other token and sees only itself (self-attention) or the
    first key's segment (cross-attention), and every query has a key to attend to.
    """

    q_ids_BT: jnp.ndarray  # int32
    kv_ids_BS: jnp.ndarray  # int32
    # int32 [B]: a leading run of each row seen in both directions (a prefix LM's prefix, a
    # hybrid's bidirectional rows: L); None when no row has one.
    prefix_len_B: jnp.ndarray | None
    causal: bool = struct.field(pytree_node=False)
    # Queries and keys from different sequences (a decoder over its encoder's output).
    cross: bool = struct.field(pytree_node=False, default=False)

    def dense(self) -> jnp.ndarray:
        """The `[B, 1, T, S]` boolean mask (True: may attend) this rule describes."""
        T, S = self.q_ids_BT.shape[1], self.kv_ids_BS.shape[1]
        allowed_BTS = self.q_ids_BT[:, :, None] == self.kv_ids_BS[:, None, :]
        if self.causal:
            q_T, k_S = jnp.arange(T), jnp.arange(S)
            order_BTS = (k_S[None, :] <= q_T[:, None])[None]
            if self.prefix_len_B is not None:
                P_B11 = self.prefix_len_B[:, None, None]
                order_BTS = order_BTS | ((q_T[None, :, None] < P_B11) & (k_S[None, None, :] < P_B11))
            allowed_BTS = allowed_BTS & order_BTS
        return allowed_BTS[:, None, :, :]


def padding_ids(segment_ids_BL: jnp.ndarray) -> jnp.ndarray:
    """Segment ids with each padding position (id 0) given an id of its own, -1 - its index."""
    own_BL = -1 - jnp.arange(segment_ids_BL.shape[1], dtype=jnp.int32)[None, :]
    return jnp.where(segment_ids_BL != 0, segment_ids_BL.astype(jnp.int32), own_BL)


def leading_run(prefix_BL: jnp.ndarray) -> jnp.ndarray:
    """`[B]` int32: the end of each row's bidirectional prefix (one past its last True)."""
    L = prefix_BL.shape[1]
    return jnp.max(jnp.where(prefix_BL.astype(bool), jnp.arange(1, L + 1, dtype=jnp.int32), 0), axis=1)


def make_segment_mask(
    kind: MaskKind | str,
    segment_ids_BL: jnp.ndarray,
    *,
    prefix_BL: jnp.ndarray | None = None,
) -> SegmentMask:
    """The self-attention mask of `kind` as a rule (`SegmentMask`).

    Args:
      kind: "causal", "bidirectional" or "prefix".
      segment_ids_BL: int ids; 0 is padding, equal non-zero ids form one document.
      prefix_BL: bool, True on the prefix, a leading run of each row (positions inside it that
        are padding stay padding); required for (and only used by) "prefix".
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind {kind!r} is not one of {MASK_KINDS}")
    if kind == "prefix" and prefix_BL is None:
        raise ValueError("a 'prefix' mask needs prefix_BL marking the bidirectional prefix")
    ids_BL = padding_ids(segment_ids_BL)
    prefix_len_B = leading_run(prefix_BL) if kind == "prefix" else None
    return SegmentMask(ids_BL, ids_BL, prefix_len_B, causal=kind != "bidirectional")


def make_attention_mask(
    kind: MaskKind | str,
    segment_ids_BL: jnp.ndarray,
    *,
    prefix_BL: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """The `[B, 1, L, L]` boolean self-attention mask of `kind`: `make_segment_mask` written out."""
    return make_segment_mask(kind, segment_ids_BL, prefix_BL=prefix_BL).dense()


def dense_mask(mask: SegmentMask | jnp.ndarray) -> jnp.ndarray:
    """A mask as `[B, 1, T, S]` booleans, whichever form it came in."""
    return mask.dense() if isinstance(mask, SegmentMask) else mask


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


def cross_segment_mask(q_segment_ids_BT: jnp.ndarray, kv_segment_ids_BS: jnp.ndarray) -> SegmentMask:
    """Cross-attention, decoder queries over encoder keys, as a rule (`SegmentMask`).

    A query sees every real key of its own example (same segment id): no causality, since the
    whole source is known before decoding starts. A padding query (id 0) sees the keys of the
    first key's segment, which keeps its softmax defined; it is never scored.
    """
    kv_ids_BS = padding_ids(kv_segment_ids_BS)
    q_ids_BT = jnp.where(q_segment_ids_BT != 0, q_segment_ids_BT.astype(jnp.int32), kv_ids_BS[:, :1])
    return SegmentMask(q_ids_BT, kv_ids_BS, None, causal=False, cross=True)


def make_cross_mask(q_segment_ids_BT: jnp.ndarray, kv_segment_ids_BS: jnp.ndarray) -> jnp.ndarray:
    """`[B, 1, T, S]` boolean cross-attention mask: `cross_segment_mask` written out."""
    return cross_segment_mask(q_segment_ids_BT, kv_segment_ids_BS).dense()
