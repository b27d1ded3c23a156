"""The fused attention kernels (models/fused_attention.py) against the written-out attention, run
in Pallas's interpret mode on this CPU: outputs and dq, dk, dv for every mask the project builds
(causal, bidirectional, prefix LM, hybrid rows, packed documents with padding, cross-attention),
the block choosing a kernel and falling back where one cannot serve."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import fused_attention
from models.block import Attention
from models.masks import SegmentMask, cross_segment_mask, make_segment_mask
from models.transformer_config import TransformerConfig

B, T, S, N, H = 2, 128, 256, 2, 16


def _segments(length: int, seed: int) -> jnp.ndarray:
    """Rows of packed documents and trailing padding; the first row is one whole document."""
    rng = np.random.default_rng(seed)
    seg = np.ones((B, length), np.int32)
    for b in range(1, B):
        end = int(rng.integers(length // 2, length))
        cuts = np.sort(rng.choice(np.arange(1, end), 2, replace=False))
        seg[b] = np.where(np.arange(length) < end, 1 + np.searchsorted(cuts, np.arange(length), "right"), 0)
    return jnp.asarray(seg)


def _masks() -> dict[str, SegmentMask]:
    seg = _segments(T, 0)
    prefix_len = jnp.asarray([0, 37])[:, None]  # no prefix; a prefix ending inside a document
    return {
        "causal": make_segment_mask("causal", seg),
        "bidirectional": make_segment_mask("bidirectional", seg),
        "prefix": make_segment_mask("prefix", seg, prefix_BL=jnp.arange(T)[None, :] < prefix_len),
        # A hybrid batch: a bidirectional row (prefix = the whole row) beside a causal one.
        "hybrid": make_segment_mask("prefix", seg, prefix_BL=jnp.asarray([[True], [False]]) & (seg > -1)),
        "cross": cross_segment_mask(seg, _segments(S, 1)),
    }


def _qkv(kv_len: int):
    q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, B, max(T, kv_len), N, H))
    return q[:, :T] / np.sqrt(H), k[:, :kv_len], v[:, :kv_len]


def _written_out(q_BTNH, k_BSNH, v_BSNH, mask: SegmentMask):
    logits_BNTS = jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BSNH)
    logits_BNTS = jnp.where(mask.dense(), logits_BNTS, -jnp.inf)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits_BNTS, -1), v_BSNH)


def _outputs_and_grads(attend, q, k, v, mask):
    cotangent = jax.random.normal(jax.random.PRNGKey(1), q.shape)
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, mask), q, k, v)
    return (out, *vjp(cotangent))


KERNEL_MASKS = [("splash", kind) for kind in _masks()] + [
    ("pallas_gpu", kind) for kind in ("causal", "bidirectional", "prefix", "hybrid")
]


@pytest.mark.parametrize("impl,kind", KERNEL_MASKS)
def test_a_kernel_gives_the_written_out_attention_and_its_gradients(impl, kind):
    mask = _masks()[kind]
    q, k, v = _qkv(S if kind == "cross" else T)
    assert fused_attention.unsupported(impl, q.shape[1], k.shape[1], mask) is None

    def fused(q, k, v, mask):
        return fused_attention.attention(impl, q, k, v, mask)

    got = _outputs_and_grads(fused, q, k, v, mask)
    want = _outputs_and_grads(_written_out, q, k, v, mask)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5, err_msg=name)


def test_what_a_kernel_cannot_serve_is_named():
    masks = _masks()
    dense = masks["causal"].dense()
    assert "dense array" in fused_attention.unsupported("splash", T, T, dense)
    assert "lengths 200 x 200" in fused_attention.unsupported("splash", 200, 200, masks["causal"])
    assert "lengths 64 x 64" in fused_attention.unsupported("splash", 64, 64, masks["causal"])
    assert fused_attention.unsupported("splash", 384, 384, masks["causal"]) is None  # 3 blocks of 128
    assert "cross-attention" in fused_attention.unsupported("pallas_gpu", T, S, masks["cross"])
    assert "length 48" in fused_attention.unsupported("pallas_gpu", 48, 48, masks["causal"])
    assert "length 96" in fused_attention.unsupported("pallas_gpu", 96, 96, masks["causal"])
    assert fused_attention.unsupported("pallas_gpu", 64, 64, masks["causal"]) is None


def _attention(impl: str) -> Attention:
    cfg = TransformerConfig(
        vocab_size=16, d_model=N * H, num_heads=N, num_layers=1, mlp_dim=8, max_len=T, attention_impl=impl
    )
    return Attention(cfg, rngs=nnx.Rngs(0))


def test_the_block_runs_the_kernel_it_is_configured_with_and_falls_back_once_where_it_cannot(caplog):
    x = jax.random.normal(jax.random.PRNGKey(2), (B, T, N * H))
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = _masks()["prefix"]
    want = _attention("einsum")(x, mask, positions)
    np.testing.assert_allclose(_attention("splash")(x, mask, positions), want, atol=2e-5)
    fused_attention.warn_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the dense mask an inference tool passes: written out, said once
            np.testing.assert_allclose(_attention("splash")(x, mask.dense(), positions), want, atol=2e-5)
    said = [r.getMessage() for r in caplog.records if "cannot serve" in r.getMessage()]
    assert said == [
        "model.attention_impl='splash' cannot serve a mask given as a dense array (build it with "
        "models.masks.make_segment_mask): that attention is written out (xla)"
    ]
