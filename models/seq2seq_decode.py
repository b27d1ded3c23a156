"""Greedy decoding for seq2seq models: the encoder once, then the decoder token by token.

`greedy_decode` on an `EncoderDecoder` keeps two caches: the decoder's own keys and values,
growing by one slot per step, and every decoder layer's keys and values of the encoder output,
computed once before the first step (`EncoderDecoder.init_cache`). With `use_cache=False`
(and for the LSTM baselines, which have no cache) each step reruns the decoder over the whole
prefix: the reference the cached loop must match. Either way the loop is one jitted function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.masks import make_attention_mask, make_cross_mask

PAD_ID = 0


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "use_cache", "bos_id", "eos_id"))
def _greedy(graphdef, state, src_BS, src_seg_BS, src_pos_BS, *, max_new_tokens, use_cache, bos_id, eos_id):
    model = nnx.merge(graphdef, state)
    B = src_BS.shape[0]
    memory = model.encode_source(src_BS, make_attention_mask("bidirectional", src_seg_BS), src_pos_BS)
    T = max_new_tokens + 1  # BOS and the generated tokens
    out_BT = jnp.full((B, T), PAD_ID, jnp.int32).at[:, 0].set(bos_id)
    done_B = jnp.zeros((B,), bool)

    if use_cache:
        cache = model.init_cache(memory, src_seg_BS != 0, T)

        def next_logits(t, out_BT, cache):
            tok_B1 = jax.lax.dynamic_slice_in_dim(out_BT, t, 1, axis=1)
            pos_B1 = jnp.full((B, 1), t, jnp.int32)
            logits_B1V, cache = model.extend(tok_B1, pos_B1, jnp.ones((B, 1), bool), cache)
            return logits_B1V[:, 0], cache
    else:
        cache = jnp.zeros(())

        def next_logits(t, out_BT, cache):
            # Slots after t are not yet written: padding, which causal queries up to t never see.
            seg_BT = (jnp.arange(T)[None, :] <= t).astype(jnp.int32) * jnp.ones((B, 1), jnp.int32)
            pos_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
            h_BTD = model.decode(
                memory,
                out_BT,
                make_attention_mask("causal", seg_BT),
                pos_BT,
                make_cross_mask(seg_BT, src_seg_BS),
            )
            return model.logits(jax.lax.dynamic_slice_in_dim(h_BTD, t, 1, axis=1))[:, 0], cache

    def body(t, carry):
        out_BT, done_B, cache = carry
        logits_BV, cache = next_logits(t, out_BT, cache)
        token_B = jnp.where(done_B, PAD_ID, jnp.argmax(logits_BV, -1).astype(jnp.int32))
        out_BT = out_BT.at[:, t + 1].set(token_B)
        return out_BT, done_B | (token_B == eos_id), cache

    out_BT, _, _ = jax.lax.fori_loop(0, max_new_tokens, body, (out_BT, done_B, cache))
    return out_BT[:, 1:]


def greedy_decode(
    model: nnx.Module,
    batch: dict[str, np.ndarray],
    max_new_tokens: int,
    *,
    bos_id: int,
    eos_id: int,
    use_cache: bool = True,
) -> np.ndarray:
    """`[B, max_new_tokens]` greedy outputs for the sources in `batch` (`src_tokens`,
    `src_segment_ids`, `src_positions`); after EOS a row holds padding (id 0)."""
    if use_cache and not hasattr(model, "init_cache"):
        raise ValueError(f"{type(model).__name__} has no KV cache; decode it with use_cache=False")
    graphdef, state = nnx.split(model)
    sources = (jnp.asarray(batch[k]) for k in ("src_tokens", "src_segment_ids", "src_positions"))
    options = dict(max_new_tokens=max_new_tokens, use_cache=use_cache, bos_id=bos_id, eos_id=eos_id)
    return np.asarray(_greedy(graphdef, state, *sources, **options))
