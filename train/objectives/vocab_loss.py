"""The loss over the vocabulary: `token_scores` of logits, and the fused projection and loss.

`projected_scores(x, E, bias, targets, weights)` is `token_scores(x @ E.T + bias, ...)` (the
tied head's logits, then the summed cross-entropy, accuracy and weight), with a custom VJP: the
forward pass already has the softmax, so it computes the gradients of `nll_sum` with respect to
`x`, `E` and `bias` there and keeps those (`[T, D]`, `[V, D]`, `[V]`) for the backward pass
instead of the `[T, V]` logits. Same FLOPs, same function; on XLA:CPU it also avoids the
transposed copy of the `[T, V]` logit gradient that autodiff's embedding gradient takes
(`dE = dlogits.T @ x`): here it is `(x.T @ dlogits).T`, the transpose on the small side.
The benchmark step's LM head and loss (4,096 tokens, vocabulary 8,192, width 256): 569 -> 496 ms,
gradients bit-identical (docs/performance.md). Train steps built for CPU use it
(`train/loop/build.py`); elsewhere the plain autodiff path runs, as measured on those devices.

Numerics follow autodiff's: the logits are computed in the compute dtype and cast to float32,
the loss in float32, and the logit gradient is cast back to the compute dtype before the two
matmuls, as the transpose of that cast would.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

Scores = dict[str, jnp.ndarray]


def token_scores(logits_xV, targets_x, weights_x) -> Scores:
    """Sums (not means), so eval can add them over batches and devices exactly."""
    w = weights_x.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits_xV, targets_x)
    # "The target has the top logit" (ties count as right): a max over the vocabulary, which
    # XLA shares with the softmax's, where an argmax is a separate pass (7% of a CPU step).
    target_logit_x = jnp.take_along_axis(logits_xV, targets_x[..., None], axis=-1)[..., 0]
    correct = (target_logit_x >= logits_xV.max(-1)).astype(jnp.float32)
    return {"nll_sum": (nll * w).sum(), "correct_sum": (correct * w).sum(), "weight_sum": w.sum()}


def _logits(x_TD, E_VD, bias_V):
    logits_TV = jnp.dot(x_TD, E_VD.T)
    return (logits_TV if bias_V is None else logits_TV + bias_V).astype(jnp.float32)


@jax.custom_vjp
def _scores(x_TD, E_VD, bias_V, targets_T, weights_T) -> Scores:
    return token_scores(_logits(x_TD, E_VD, bias_V), targets_T, weights_T)


def _scores_and_grads(x_TD, E_VD, bias_V, targets_T, weights_T):
    logits_TV = _logits(x_TD, E_VD, bias_V)
    w_T = weights_T.astype(jnp.float32)
    max_T = logits_TV.max(-1)
    exp_TV = jnp.exp(logits_TV - max_T[:, None])
    sum_T = exp_TV.sum(-1)
    target_logit_T = jnp.take_along_axis(logits_TV, targets_T[:, None], axis=-1)[:, 0]
    nll_T = jnp.log(sum_T) + max_T - target_logit_T
    scores = {
        "nll_sum": (nll_T * w_T).sum(),
        "correct_sum": ((target_logit_T >= max_T).astype(jnp.float32) * w_T).sum(),
        "weight_sum": w_T.sum(),
    }
    # d nll_sum / d logits: (softmax - one-hot target), weighted.
    one_hot_TV = targets_T[:, None] == jnp.arange(logits_TV.shape[-1])[None, :]
    d_TV = (exp_TV / sum_T[:, None] - one_hot_TV) * w_T[:, None]
    d_bias_V = None if bias_V is None else d_TV.sum(0).astype(bias_V.dtype)
    d_TV = d_TV.astype(x_TD.dtype)
    d_x_TD = jnp.dot(d_TV, E_VD)
    d_E_VD = jnp.dot(x_TD.T, d_TV).T
    return scores, (d_x_TD, d_E_VD, d_bias_V)


def _forward(x_TD, E_VD, bias_V, targets_T, weights_T):
    return _scores_and_grads(x_TD, E_VD, bias_V, targets_T, weights_T)


def _backward(grads, g: Scores):
    # Only nll_sum depends on the inputs through a gradient: accuracy is piecewise constant
    # and the weights are data.
    d_x_TD, d_E_VD, d_bias_V = grads
    scale = g["nll_sum"]
    d_bias = None if d_bias_V is None else d_bias_V * scale.astype(d_bias_V.dtype)
    return (
        d_x_TD * scale.astype(d_x_TD.dtype),
        d_E_VD * scale.astype(d_E_VD.dtype),
        d_bias,
        None,
        None,
    )


_scores.defvjp(_forward, _backward)


def projected_scores(x_xD, E_VD, bias_V, targets_x, weights_x) -> Scores:
    """`token_scores` of the logits `x @ E.T (+ bias)` for states `x` of any leading shape; the
    gradient of `nll_sum` comes from the forward pass (module docstring)."""
    D = x_xD.shape[-1]
    return _scores(x_xD.reshape(-1, D), E_VD, bias_V, targets_x.reshape(-1), weights_x.reshape(-1))


def vocab_scores(model: Any, h_xD, targets_x, weights_x, fused: bool) -> Scores:
    """`token_scores` of the model's logits for hidden states `h_xD`; with `fused` (and a model
    that has `vocab_projection`) the projection and loss run as one function whose gradient
    comes from the forward pass (`projected_scores`): the same function."""
    if fused and hasattr(model, "vocab_projection"):
        return projected_scores(*model.vocab_projection(h_xD), targets_x, weights_x)
    return token_scores(model.logits(h_xD), targets_x, weights_x)
