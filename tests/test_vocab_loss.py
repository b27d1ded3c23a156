"""The chunked loss over the vocabulary (train/objectives/vocab_loss.py) against the full logits:
loss, accuracy and every gradient, for the head alone (tied or with BERT's bias, padded chunks,
zero weights) and through the CLM and MLM objectives of a model, in float32 and bfloat16."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import registry
from models.transformer import vocab_logits
from train.loop import step as step_lib
from train.objectives import make_objective
from train.objectives.base import token_scores
from train.objectives.vocab_loss import chunk_positions, chunked_scores

B, L, D, V = 3, 37, 16, 101


def _head_inputs(dtype: str, bias: bool):
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    h = jax.random.normal(k[0], (B, L, D)).astype(dtype)
    w = jax.random.normal(k[1], (V, D)) * 0.3
    b = jax.random.normal(k[2], (V,)) if bias else None
    targets = jax.random.randint(k[3], (B, L), 0, V)
    weights = jax.random.uniform(k[4], (B, L)) < 0.7
    return h, w, b, targets, weights


def _full(h, w, b, targets, weights, dtype):
    s = token_scores(vocab_logits(h, w, b, dtype), targets, weights)
    return s["nll_sum"], s["correct_sum"]


def _chunked(h, w, b, targets, weights, dtype, chunk):
    nll_sum, correct = chunked_scores(h, w, b, targets, weights, dtype, chunk)
    return nll_sum, (correct * weights).sum()


def _value_and_grads(f, *args):
    h, w, b, targets, weights = args[:5]

    def loss(h, w, b):
        nll_sum, correct_sum = f(h, w, b, targets, weights, *args[5:])
        return nll_sum, correct_sum

    (nll, correct), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(h, w, b)
    return nll, correct, grads


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [3, 8, 37, 64])  # padded; padded; one whole chunk; one padded
def test_the_chunked_head_gives_the_full_heads_loss_accuracy_and_gradients_in_float32(bias, chunk):
    args = _head_inputs("float32", bias)
    want = _value_and_grads(_full, *args, "float32")
    got = _value_and_grads(_chunked, *args, "float32", chunk)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert got[1] == want[1]
    for g, w_ in zip(got[2], want[2], strict=True):
        if w_ is None:
            assert g is None
        else:  # the same terms summed in another order
            np.testing.assert_allclose(g, w_, rtol=1e-5, atol=1e-6)


def test_in_bfloat16_the_gradients_differ_by_the_rounding_of_one_product():
    """The full head's embedding gradient comes out of one bf16 product; the chunked head sums
    its chunks' products in float32. The measured gap is that of one bf16 rounding (2^-8)."""
    args = _head_inputs("bfloat16", True)
    want = _value_and_grads(_full, *args, "bfloat16")
    got = _value_and_grads(_chunked, *args, "bfloat16", 8)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert got[1] == want[1]
    dh, dw, db = got[2]
    assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    np.testing.assert_allclose(dh.astype(np.float32), want[2][0].astype(np.float32), rtol=2**-7, atol=1e-3)
    np.testing.assert_allclose(dw, want[2][1], rtol=2**-7, atol=2e-3)
    np.testing.assert_allclose(db, want[2][2], rtol=1e-5, atol=1e-6)


def test_a_chunk_holds_about_the_tokens_asked_for_on_each_device():
    assert chunk_positions(4096, rows=16, positions=1024) == 256
    assert chunk_positions(4096, rows=2, positions=1024) == 1024  # never past the row
    assert chunk_positions(4096, rows=8192, positions=1024) == 1  # never below one position


def _scores_and_grads(config, loss_impl: str, dtype: str):
    config = config.copy_and_resolve_references()
    vocab = 64
    cfg = registry.model_config(config, vocab)
    cfg = dataclasses.replace(cfg, loss_impl=loss_impl, loss_chunk_tokens=24, dtype=dtype)
    objective = make_objective(config, vocab)
    graphdef, params, rest = step_lib.split_model(registry.make_model(cfg, nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(7, vocab, (4, config.seq_len)).astype(np.int32)
    seg = np.ones_like(tokens)
    seg[1, 20:] = 0
    batch = {"tokens": tokens, "segment_ids": seg, "positions": np.tile(np.arange(config.seq_len), (4, 1))}
    model_batch = objective.transform(batch, jax.random.PRNGKey(1))

    def nll_sum(params):
        scores = objective.scores(nnx.merge(graphdef, params, rest), model_batch, config.mask)
        return scores["nll_sum"], scores

    (_, scores), grads = jax.value_and_grad(nll_sum, has_aux=True)(params)
    return scores, grads


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_an_objective_scores_and_trains_alike_with_either_head(objective, micro):
    """Through the objectives (the masked LM's gathered positions too): a model's compile each,
    hence the full tier; the head's own equality is checked above in the fast one."""
    full = _scores_and_grads(micro(objective), "full", "float32")
    chunked = _scores_and_grads(micro(objective), "chunked", "float32")
    for key in ("nll_sum", "correct_sum", "weight_sum"):
        np.testing.assert_allclose(chunked[0][key], full[0][key], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), chunked[1], full[1])
