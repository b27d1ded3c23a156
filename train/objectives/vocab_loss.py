"""The loss over the vocabulary without the logits of a whole batch: the head in chunks.

`token_scores` (train/objectives/base.py) takes float32 logits `[..., V]` for every scored
token, and its gradient another array as large: for GPT-2 at 19 rows of 1024 tokens a chip,
3.9 GB each. `chunked_scores` runs the vocabulary projection and the cross-entropy over chunks
of positions in a `lax.scan`, and computes the gradients of the hidden states, the projection
and the bias in the same pass (a custom VJP whose backward pass only scales them by the
incoming cotangent): no chunk's logits outlive it, and no logits are computed twice. The
arithmetic is the full head's (`models.transformer.vocab_logits`, the cross-entropy in float32,
the gradient of the logits cast to the compute dtype before its two products); the sums differ
only in the order of reduction, and the projection's gradient is summed in float32 over the
chunks.

Chunks are cut along positions, every row in each: a batch sharded over devices stays sharded,
and a chunk holds `chunk_tokens` tokens a device (`chunk_positions`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from models.transformer import vocab_logits


def chunk_positions(chunk_tokens: int, rows: int, positions: int) -> int:
    """Positions per chunk so that each device's chunk holds about `chunk_tokens` tokens: the
    rows of the batch are spread over every device of the mesh being traced (all its axes
    shard the batch), one device when none is."""
    mesh = jax.sharding.get_abstract_mesh()
    devices = 1 if mesh.empty else mesh.size
    rows_per_device = max(1, rows // devices)
    return max(1, min(positions, chunk_tokens // rows_per_device))


def _chunked(x_BL: jnp.ndarray, chunk: int) -> jnp.ndarray:
    """`[B, L, ...]` -> `[n, B, chunk, ...]`, zero-padded to `n * chunk` positions."""
    B, L = x_BL.shape[:2]
    n = -(-L // chunk)
    pad = [(0, 0), (0, n * chunk - L)] + [(0, 0)] * (x_BL.ndim - 2)
    x = jnp.pad(x_BL, pad).reshape(B, n, chunk, *x_BL.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _unchunked(x_nBc: jnp.ndarray, L: int) -> jnp.ndarray:
    n, B, c = x_nBc.shape[:3]
    return jnp.moveaxis(x_nBc, 0, 1).reshape(B, n * c, *x_nBc.shape[3:])[:, :L]


def _chunk_stats(h_BcD, w_VD, b_V, t_Bc, wt_Bc, dtype: str):
    """(logits, log-partition, weighted nll sum, target has the top logit) of one chunk."""
    logits_BcV = vocab_logits(h_BcD, w_VD, b_V, dtype)
    max_Bc = logits_BcV.max(-1)
    lse_Bc = max_Bc + jnp.log(jnp.exp(logits_BcV - max_Bc[..., None]).sum(-1))
    target_Bc = jnp.take_along_axis(logits_BcV, t_Bc[..., None], axis=-1)[..., 0]
    nll_sum = ((lse_Bc - target_Bc) * wt_Bc).sum()
    return logits_BcV, lse_Bc, nll_sum, (target_Bc >= max_Bc).astype(jnp.float32)


def _inputs(h_BLD, targets_BL, weights_BL, chunk):
    return (
        _chunked(h_BLD, chunk),
        _chunked(targets_BL, chunk),
        _chunked(weights_BL.astype(jnp.float32), chunk),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def chunked_scores(h_BLD, w_VD, b_V, targets_BL, weights_BL, dtype: str, chunk: int):
    """(sum of weighted token losses, `[B, L]` 1.0 where the target has the top logit) of the
    head `vocab_logits(h_BLD, w_VD, b_V, dtype)`, `chunk` positions at a time."""
    L = h_BLD.shape[1]

    def step(nll_sum, chunk_inputs):
        h, t, wt = chunk_inputs
        _, _, nll, correct = _chunk_stats(h, w_VD, b_V, t, wt, dtype)
        return nll_sum + nll, correct

    nll_sum, correct = jax.lax.scan(
        step, jnp.zeros((), jnp.float32), _inputs(h_BLD, targets_BL, weights_BL, chunk)
    )
    return nll_sum, _unchunked(correct, L)


def _forward_with_gradients(h_BLD, w_VD, b_V, targets_BL, weights_BL, dtype: str, chunk: int):
    L, V = h_BLD.shape[1], w_VD.shape[0]
    cdt = jnp.dtype(dtype)

    def step(carry, chunk_inputs):
        nll_sum, dw_VD, db_V = carry
        h, t, wt = chunk_inputs
        logits, lse, nll, correct = _chunk_stats(h, w_VD, b_V, t, wt, dtype)
        # d(sum of weighted losses)/d(logits): (softmax - one-hot target) x weight, in float32.
        dlogits = (jnp.exp(logits - lse[..., None]) - jax.nn.one_hot(t, V, dtype=jnp.float32)) * wt[..., None]
        dl = dlogits.astype(cdt)
        dh = jnp.dot(dl, w_VD.astype(cdt)).astype(h.dtype)
        dw_VD = dw_VD + jnp.einsum("bcv,bcd->vd", dl, h.astype(cdt), preferred_element_type=jnp.float32)
        db_V = db_V + dlogits.sum((0, 1))
        return (nll_sum + nll, dw_VD, db_V), (correct, dh)

    init = (jnp.zeros((), jnp.float32), jnp.zeros(w_VD.shape, jnp.float32), jnp.zeros((V,), jnp.float32))
    (nll_sum, dw_VD, db_V), (correct, dh) = jax.lax.scan(
        step, init, _inputs(h_BLD, targets_BL, weights_BL, chunk)
    )
    grads = (_unchunked(dh, L), dw_VD.astype(w_VD.dtype), None if b_V is None else db_V.astype(b_V.dtype))
    return (nll_sum, _unchunked(correct, L)), grads


def _backward(dtype: str, chunk: int, grads: Any, cotangents: Any):
    del dtype, chunk
    g = cotangents[0]  # the loss sum's; "correct" has no gradient
    dh_BLD, dw_VD, db_V = grads
    scale = lambda x: None if x is None else (x * g).astype(x.dtype)  # noqa: E731
    return scale(dh_BLD), scale(dw_VD), scale(db_V), None, None


chunked_scores.defvjp(_forward_with_gradients, _backward)
