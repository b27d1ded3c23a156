"""Positional encodings: how word order reaches the Transformer (claim C1).

Two families, because they enter the network at different places:
- additive encodings ("learned", "sinusoidal") are added to the token embeddings once;
- "rotary" rotates queries and keys inside every attention layer, so attention scores depend
  only on the relative offset of two tokens;
- "none" gives a bidirectional model no notion of order at all (it is then equivariant to
  permutations of its input); a causal model still sees order through its mask.

Positions are passed in per token (`positions_BL`) rather than derived from the row index, so
packed documents each start again at position 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

POSITION_KINDS: tuple[str, ...] = ("none", "learned", "sinusoidal", "rotary")
# Token embeddings and learned positions start at this std. Sinusoids (amplitude 1) are scaled
# to it, else they swamp the tokens at init; Vaswani et al. instead scale embeddings by sqrt(d).
EMBED_INIT_STD = 0.02


def sinusoidal_table(positions_BL: jnp.ndarray, d_model: int) -> jnp.ndarray:
    """Vaswani et al. 2017 encodings, computed on the fly for the given positions."""
    half = d_model // 2
    freqs_H = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles_BLH = positions_BL[..., None].astype(jnp.float32) * freqs_H
    table_BLD = jnp.concatenate([jnp.sin(angles_BLH), jnp.cos(angles_BLH)], axis=-1)
    if d_model % 2:
        table_BLD = jnp.pad(table_BLD, ((0, 0), (0, 0), (0, 1)))
    return table_BLD


def _rotate_half_matrix(head_dim: int) -> np.ndarray:
    """`x @ R` = concat([-x2, x1]) for the halves x1, x2 of x: a signed permutation."""
    half = head_dim // 2
    R = np.zeros((head_dim, head_dim), np.float32)
    R[half:, :half] = -np.eye(half, dtype=np.float32)
    R[:half, half:] = np.eye(half, dtype=np.float32)
    return R


def apply_rotary(x_BLNH: jnp.ndarray, positions_BL: jnp.ndarray, base: float = 10_000.0):
    """Rotates pairs of features (first half with second half) by position-dependent angles:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), written as x cos + rotate_half(x) sin.

    Two things keep this cheap in a compiled step (XLA:CPU, measured): rotate_half is a
    matmul by a fixed signed permutation (exact: its entries are 0 and +-1, at HIGHEST
    precision), where slicing and concatenating halves compiles to a loop 3x slower; and the
    sines and cosines are computed once per call behind an optimization barrier, which stops
    XLA from fusing a recomputation of them into every consumer (sin costs ~20x a multiply).
    """
    head_dim = x_BLNH.shape[-1]
    half = head_dim // 2
    freqs_K = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_BLK = positions_BL[..., None].astype(jnp.float32) * freqs_K
    sin_BLK, cos_BLK = jax.lax.optimization_barrier((jnp.sin(angles_BLK), jnp.cos(angles_BLK)))
    sin_BL1H = jnp.concatenate([sin_BLK, sin_BLK], -1)[:, :, None, :]
    cos_BL1H = jnp.concatenate([cos_BLK, cos_BLK], -1)[:, :, None, :]
    x_BLNH32 = x_BLNH.astype(jnp.float32)
    half_turn_BLNH = jnp.matmul(x_BLNH32, _rotate_half_matrix(head_dim), precision=jax.lax.Precision.HIGHEST)
    return (x_BLNH32 * cos_BL1H + half_turn_BLNH * sin_BL1H).astype(x_BLNH.dtype)


class AdditivePositions(nnx.Module):
    """The encoding added to token embeddings; the identity for "none" and "rotary"."""

    def __init__(self, kind: str, max_len: int, d_model: int, *, param_dtype, rngs: nnx.Rngs):
        if kind not in POSITION_KINDS:
            raise ValueError(f"position kind {kind!r} is not one of {POSITION_KINDS}")
        self.kind = kind
        self.d_model = d_model
        if kind == "learned":
            self.table = nnx.Embed(
                max_len,
                d_model,
                embedding_init=nnx.initializers.normal(EMBED_INIT_STD),
                param_dtype=param_dtype,
                rngs=rngs,
            )

    def __call__(self, x_BLD: jnp.ndarray, positions_BL: jnp.ndarray) -> jnp.ndarray:
        if self.kind == "learned":
            return x_BLD + self.table(positions_BL).astype(x_BLD.dtype)
        if self.kind == "sinusoidal":
            table_BLD = EMBED_INIT_STD * sinusoidal_table(positions_BL, self.d_model)
            return x_BLD + table_BLD.astype(x_BLD.dtype)
        return x_BLD
