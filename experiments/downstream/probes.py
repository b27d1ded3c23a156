"""Linear probes on frozen per-position features: what each layer of a pretrained model encodes.

The HMM corpus makes the probe's target exact: the hidden state z_t that emitted x_t. A causal
model's feature at x_t's position has seen x_<=t, so the best any probe of it can do is the
filtering accuracy (argmax p(z_t | x_<=t)); a bidirectional model's feature has seen the whole
row, and its bound is the smoothing accuracy (argmax p(z_t | x_1..x_T)). Both ceilings are
computed exactly on the same eval tokens, with the majority-class baseline as the floor.

The probe is multinomial logistic regression on standardised features, fit full-batch with
L-BFGS: a convex problem solved to convergence, so accuracy differences between layers or models
are about the features, not about the probe's optimisation.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from models.masks import make_attention_mask
from train.data.hmm import HMM
from train.data.sources import hmm_rows

# Rows per forward pass when extracting features; fixed so the extractor compiles once.
_CHUNK = 128
# Separates the probe's samples from the training stream ([hmm seed, run seed, step]) and the
# LM eval set ([hmm seed, 0xE7A1]).
_PROBE_STREAM = 0x960BE


def reading_mask(mask_kind: str, segment_ids_BL: jnp.ndarray) -> jnp.ndarray:
    """The mask a pretrained model reads a whole input with.

    A prefix LM reads an input it is given (a prompt) as its bidirectional prefix, so under
    "prefix" every real token is prefix; "causal" and "bidirectional" are used as they are.
    """
    prefix_BL = segment_ids_BL != 0 if mask_kind == "prefix" else None
    return make_attention_mask(mask_kind, segment_ids_BL, prefix_BL=prefix_BL)


@functools.partial(jax.jit, static_argnames=("graphdef", "mask_kind", "layers"))
def _hidden_states(
    graphdef: nnx.GraphDef,
    state: Any,
    tokens_BL: jnp.ndarray,
    segment_ids_BL: jnp.ndarray,
    positions_BL: jnp.ndarray,
    mask_kind: str,
    layers: tuple[int, ...],
) -> jnp.ndarray:
    model = nnx.merge(graphdef, state)
    model.eval()  # BatchNorm reads its running statistics: features must not depend on the batch
    states = model.residual_stream(tokens_BL, reading_mask(mask_kind, segment_ids_BL), positions_BL)
    return jnp.stack([states[i] for i in layers])  # [K, B, L, D]


def _layer_index(model: nnx.Module, layer: int) -> int:
    num = model.cfg.num_layers + 1
    if not -num <= layer < num:
        raise ValueError(f"layer={layer} is outside [-{num}, {num}) for a {num - 1}-block model")
    return layer % num


def probe_features(
    model: nnx.Module,
    tokens_BL: np.ndarray,
    segment_ids_BL: np.ndarray,
    positions_BL: np.ndarray,
    mask_kind: str,
    layer: int = -1,
) -> jnp.ndarray:
    """The residual stream `[B, L, D]` at `layer` of `Transformer.residual_stream`.

    Layer 0 is the embedding output (token embedding plus additive positions, before any
    attention), layer i the output of block i, and -1 the last block (before the final norm).
    """
    graphdef, state = nnx.split(model)
    index = _layer_index(model, layer)
    return _hidden_states(graphdef, state, tokens_BL, segment_ids_BL, positions_BL, mask_kind, (index,))[0]


def _standardise(params: dict[str, jnp.ndarray], x_ND: jnp.ndarray) -> jnp.ndarray:
    return (x_ND - params["mean"]) / params["std"]


def _logits(params: dict[str, jnp.ndarray], x_ND: jnp.ndarray) -> jnp.ndarray:
    return _standardise(params, x_ND) @ params["W"] + params["b"]


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit(
    x_ND: jnp.ndarray, labels_N: jnp.ndarray, num_classes: int, steps: int, l2: float, key: jax.Array
) -> dict[str, jnp.ndarray]:
    mean_D = x_ND.mean(0)
    # A constant feature (std 0) stays 0 after standardising instead of becoming NaN.
    std_D = jnp.maximum(x_ND.std(0), 1e-6)
    z_ND = (x_ND - mean_D) / std_D
    D = x_ND.shape[1]

    def loss_fn(w: dict[str, jnp.ndarray]) -> jnp.ndarray:
        logits_NC = z_ND @ w["W"] + w["b"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits_NC, labels_N).mean()
        return nll + 0.5 * l2 * jnp.sum(w["W"] ** 2)

    # Small random weights rather than zeros: symmetric starts are fine for a convex loss, but
    # this keeps the first L-BFGS direction from being degenerate across classes.
    w0 = {"W": 0.01 * jax.random.normal(key, (D, num_classes)), "b": jnp.zeros(num_classes)}
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_fn)

    def step(carry, _):
        w, opt_state = carry
        value, grad = value_and_grad(w, state=opt_state)
        updates, opt_state = opt.update(grad, opt_state, w, value=value, grad=grad, value_fn=loss_fn)
        return (optax.apply_updates(w, updates), opt_state), value

    (w, _), _ = jax.lax.scan(step, (w0, opt.init(w0)), None, length=steps)
    return {"mean": mean_D, "std": std_D, **w}


def fit_linear_probe(
    features_ND: np.ndarray,
    labels_N: np.ndarray,
    num_classes: int,
    *,
    steps: int = 100,
    l2: float = 1e-4,
    seed: int = 0,
) -> dict[str, jnp.ndarray]:
    """Multinomial logistic regression on features standardised with these (training) statistics.

    Returns `{"mean", "std", "W" [D, C], "b" [C]}`; `l2` penalises `W` only.
    """
    features_ND = jnp.asarray(features_ND, jnp.float32)
    labels_N = jnp.asarray(labels_N, jnp.int32)
    return _fit(features_ND, labels_N, num_classes, steps, l2, jax.random.PRNGKey(seed))


def probe_accuracy(params: dict[str, jnp.ndarray], features_ND: np.ndarray, labels_N: np.ndarray) -> float:
    predicted_N = jnp.argmax(_logits(params, jnp.asarray(features_ND, jnp.float32)), -1)
    return float(jnp.mean(predicted_N == jnp.asarray(labels_N)))


def _symbol_features(
    model: nnx.Module, mask_kind: str, symbols_NT: np.ndarray, layers: tuple[int, ...]
) -> np.ndarray:
    """Features `[K, N * T, D]` at each symbol's own position (row index t for x_t, after BOS)."""
    rows = hmm_rows(symbols_NT)
    N = len(symbols_NT)
    pad = -N % _CHUNK
    rows = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in rows.items()}
    graphdef, state = nnx.split(model)
    chunks = []
    for start in range(0, N + pad, _CHUNK):
        part = {k: v[start : start + _CHUNK] for k, v in rows.items()}
        h_KBLD = _hidden_states(
            graphdef, state, part["tokens"], part["segment_ids"], part["positions"], mask_kind, layers
        )
        chunks.append(np.asarray(h_KBLD[:, :, 1:]))
    h_KNTD = np.concatenate(chunks, axis=1)[:, :N]
    return h_KNTD.reshape(len(layers), -1, h_KNTD.shape[-1])


def token_only_accuracy(hmm: HMM, x_NT: np.ndarray, z_NT: np.ndarray) -> float:
    """Accuracy of argmax p(z_t | x_t) (the token and its position, no context).

    The best a lookup table from the token can do: a layer that beats it uses context. Position
    enters only through the state prior p(z_t) = pi A^(t-1).
    """
    T = x_NT.shape[1]
    prior_TS = np.empty((T, hmm.spec.num_states))
    prior_TS[0] = hmm.pi
    for t in range(1, T):
        prior_TS[t] = prior_TS[t - 1] @ hmm.A
    joint_NTS = prior_TS[None] * hmm.B.T[x_NT]
    return float((joint_NTS.argmax(-1) == z_NT).mean())


def hmm_state_probe(
    model: nnx.Module,
    mask_kind: str,
    hmm: HMM,
    *,
    num_train: int = 512,
    num_eval: int = 256,
    seq_len: int = 64,
    layers: tuple[int, ...] | None = None,
    seed: int = 0,
    steps: int = 100,
    l2: float = 1e-4,
) -> dict[str, Any]:
    """Probes every requested layer for the hidden HMM state of each token.

    `seq_len` is the row length, as in the training config: BOS then `seq_len - 1` symbols.
    Sequences (with their true states) are drawn fresh from `hmm`, from a stream of their own.
    Returns `{"accuracy": {layer: eval accuracy}, "filtering", "smoothing", "token_only",
    "majority", "num_eval_tokens"}`, all on the same eval tokens; layers default to all (0 =
    embedding, ..., num_layers = last block).
    """
    if layers is None:
        layers = tuple(range(model.cfg.num_layers + 1))
    layers = tuple(_layer_index(model, i) for i in layers)
    rng = np.random.default_rng([hmm.spec.seed, _PROBE_STREAM, seed])
    x_train, z_train = hmm.sample_with_states(rng, num_train, seq_len - 1)
    x_eval, z_eval = hmm.sample_with_states(rng, num_eval, seq_len - 1)
    f_train = _symbol_features(model, mask_kind, x_train, layers)
    f_eval = _symbol_features(model, mask_kind, x_eval, layers)
    y_train, y_eval = z_train.reshape(-1), z_eval.reshape(-1)
    S = hmm.spec.num_states
    accuracy = {}
    for k, layer in enumerate(layers):
        params = fit_linear_probe(f_train[k], y_train, S, steps=steps, l2=l2, seed=seed)
        accuracy[layer] = probe_accuracy(params, f_eval[k], y_eval)
    majority_class = np.bincount(y_train, minlength=S).argmax()
    return {
        "accuracy": accuracy,
        **hmm.state_ceilings(x_eval, z_eval),
        "token_only": token_only_accuracy(hmm, x_eval, z_eval),
        "majority": float((y_eval == majority_class).mean()),
        "num_eval_tokens": int(y_eval.size),
    }
