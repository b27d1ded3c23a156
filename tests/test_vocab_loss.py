"""The fused vocabulary projection and loss is the same function as autodiff's, value and gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.transformer import Transformer, TransformerConfig
from train.loop.step import split_model
from train.objectives import CausalLM, MaskedLM
from train.objectives.vocab_loss import projected_scores, token_scores
from train.tokenizer.vocab import BOS_ID, NUM_SPECIAL

V, D = 300, 32


def _inputs(dtype, with_bias: bool, seed: int = 0):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    x = jax.random.normal(k[0], (3, 7, D)).astype(dtype)
    E = (0.3 * jax.random.normal(k[1], (V, D))).astype(dtype)
    bias = 0.1 * jax.random.normal(k[2], (V,)) if with_bias else None
    targets = jax.random.randint(k[3], (3, 7), 0, V)
    weights = jax.random.bernoulli(k[4], 0.7, (3, 7))
    return x, E, bias, targets, weights


def _autodiff(x, E, bias, targets, weights):
    logits = jnp.dot(x, E.T)
    logits = (logits if bias is None else logits + bias).astype(jnp.float32)
    return token_scores(logits, targets, weights)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_scores_and_gradients_equal_autodiffs(dtype, with_bias):
    x, E, bias, targets, weights = _inputs(dtype, with_bias)
    args = (x, E) if bias is None else (x, E, bias)

    def loss(fn):
        def nll(*a):
            s = fn(a[0], a[1], a[2] if bias is not None else None, targets, weights)
            return s["nll_sum"], s

        return jax.jit(jax.value_and_grad(nll, argnums=tuple(range(len(args))), has_aux=True))

    (_, ours), ours_grads = loss(projected_scores)(*args)
    (_, ref), ref_grads = loss(_autodiff)(*args)
    # bf16: XLA may keep a bf16 product's float32 result where the two programs round it
    # differently (measured: 7e-5 relative on the loss), well inside bf16's 8e-3.
    tol = 1e-6 if dtype == jnp.float32 else 1e-3
    for key in ("nll_sum", "correct_sum", "weight_sum"):
        np.testing.assert_allclose(ours[key], ref[key], rtol=tol)
    tol = 1e-6 if dtype == jnp.float32 else 1e-2  # bf16: also one rounding of the logit gradient
    for a, b in zip(ours_grads, ref_grads, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, atol=tol * np.abs(b).max())
    # Without differentiation it is token_scores itself (in float32, to the bit).
    plain = jax.jit(projected_scores)(x, E, bias, targets, weights)["nll_sum"]
    reference = jax.jit(_autodiff)(x, E, bias, targets, weights)["nll_sum"]
    np.testing.assert_allclose(plain, reference, rtol=0 if dtype == jnp.float32 else 1e-3)


def _batch(B=4, L=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(NUM_SPECIAL, V, (B, L)).astype(np.int32)
    tokens[:, 0] = BOS_ID
    return {
        "tokens": tokens,
        "segment_ids": np.ones((B, L), np.int32),
        "positions": np.tile(np.arange(L), (B, 1)),
    }


@pytest.mark.parametrize(
    "objective,mask,head", [(CausalLM(), "causal", "tied"), (MaskedLM(vocab_size=V), "bidirectional", "bert")]
)
def test_fused_head_objective_has_the_same_gradient(objective, mask, head):
    """GPT's tied head and BERT's head with its output bias, through the objective's scores."""
    cfg = TransformerConfig(
        vocab_size=V, d_model=D, num_heads=2, num_layers=2, mlp_dim=64, max_len=16, head=head
    )
    graphdef, params, rest = split_model(Transformer(cfg, rngs=nnx.Rngs(0)))
    batch = objective.transform(_batch(), jax.random.PRNGKey(1))

    def grads(obj):
        def nll(p):
            return obj.scores(nnx.merge(graphdef, p, rest), batch, mask)["nll_sum"]

        return jax.jit(jax.value_and_grad(nll))(params)

    (loss, ref), (fused_loss, fused) = (
        grads(objective),
        grads(dataclasses.replace(objective, fused_head=True)),
    )
    np.testing.assert_allclose(fused_loss, loss, rtol=1e-6)
    flat_ref, flat = jax.tree.leaves(ref), jax.tree.leaves(fused)
    assert len(flat) == len(flat_ref)
    for a, b in zip(flat, flat_ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6 * max(float(np.abs(b).max()), 1e-3))
