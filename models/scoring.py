"""Sequence scores from a trained model: exact causal log-likelihood, or masked-LM pseudo-likelihood.

A causal model (GPT) defines a distribution over sequences, so its score is the chain rule:

    causal_log_likelihood(x) = sum_{t >= 2} log p(x_t | x_<t)

over the real tokens of each document, the document's first token (`<bos>`) being given rather
than predicted (it is the same in every row, and a model is never trained to predict it). A row
of packed documents gets the sum over its documents.

A bidirectional model (BERT) defines no such distribution. Its score is the pseudo-log-likelihood
of Salazar et al. (2020), "Masked Language Model Scoring":

    pseudo_log_likelihood(x) = sum_t log p(x_t | x_-t)

where each real non-special token is replaced by the mask token in turn and scored from the rest
(the vocabulary's mask id and special ids are arguments: models/ knows no tokenizer).
It is computed batched: the masked copies of all rows form one stream, run in fixed-size
chunks through one jitted forward, and only each copy's masked position goes through the
vocabulary projection (one `D x V` product per copy, not `L`).

The two are different quantities (PLL is not a log-probability), so compare models of the same
kind by score, and models of different kinds by what the scores decide, e.g. minimal-pair
accuracy (`minimal_pair_accuracy`). Scoring always runs the model in eval mode (a merged copy
is switched inside the jitted function; the caller's model is left as it is).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.masks import make_attention_mask

Rows = Mapping[str, np.ndarray]  # "tokens", "segment_ids", "positions": int32 [N, L]

DEFAULT_BATCH = 32  # rows per causal forward pass
DEFAULT_CHUNK = 128  # masked copies per PLL forward pass


def _eval_model(graphdef: nnx.GraphDef, state: nnx.State) -> nnx.Module:
    model = nnx.merge(graphdef, state)
    model.eval()  # BatchNorm: running statistics, not the scored batch's
    return model


@functools.lru_cache(maxsize=32)
def _causal_fn(graphdef: nnx.GraphDef) -> Callable:
    """Jitted `(state, tokens, seg, pos) -> [B]` for one model structure (cached per graphdef)."""

    def fn(state, tokens_BL, seg_BL, pos_BL):
        model = _eval_model(graphdef, state)
        h_BLD = model.hidden_states(tokens_BL, make_attention_mask("causal", seg_BL), pos_BL)
        logp_BLV = jax.nn.log_softmax(model.logits(h_BLD[:, :-1]), axis=-1)
        # Position t predicts token t+1 when both are real tokens of the same document.
        next_BL = tokens_BL[:, 1:]
        logp_BL = jnp.take_along_axis(logp_BLV, next_BL[..., None], axis=-1)[..., 0]
        scored_BL = (seg_BL[:, :-1] != 0) & (seg_BL[:, 1:] == seg_BL[:, :-1])
        return jnp.where(scored_BL, logp_BL, 0.0).sum(-1)

    return jax.jit(fn)


@functools.lru_cache(maxsize=32)
def _masked_fn(graphdef: nnx.GraphDef, mask_id: int) -> Callable:
    """Jitted `(state, tokens, seg, pos, at, target) -> [C]`: log p(target | copy with <mask> at `at`)."""

    def fn(state, tokens_CL, seg_CL, pos_CL, at_C, target_C):
        model = _eval_model(graphdef, state)
        C = tokens_CL.shape[0]
        inputs_CL = tokens_CL.at[jnp.arange(C), at_C].set(mask_id)
        h_CLD = model.hidden_states(inputs_CL, make_attention_mask("bidirectional", seg_CL), pos_CL)
        h_CD = h_CLD[jnp.arange(C), at_C]  # only the masked position reaches the vocab projection
        logp_CV = jax.nn.log_softmax(model.logits(h_CD), axis=-1)
        return jnp.take_along_axis(logp_CV, target_C[:, None], axis=-1)[:, 0]

    return jax.jit(fn)


def _trimmed(tokens_BL, segment_ids_BL, positions_BL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows as int32, without trailing columns that are padding in every row.

    Padding scores nothing (see the tests), so this changes no score; it saves the compute of
    short rows in long buffers (BLiMP's ~10-token sentences in `seq_len` rows). The kept length
    is rounded up to a multiple of 16, so few distinct lengths get compiled.
    """
    arrays = [np.asarray(a, np.int32) for a in (tokens_BL, segment_ids_BL, positions_BL)]
    L = arrays[0].shape[1]
    real_L = (arrays[1] != 0).any(0)
    last = int(np.nonzero(real_L)[0].max()) + 1 if real_L.any() else 1
    keep = min(L, -(-last // 16) * 16)
    return tuple(a[:, :keep] for a in arrays)


def _padded(x: np.ndarray, n: int) -> np.ndarray:
    """`x` with zero rows appended up to `n` rows: padding rows (segment 0) that score nothing."""
    return np.pad(x, ((0, n - len(x)),) + ((0, 0),) * (x.ndim - 1))


def causal_log_likelihood(
    model: nnx.Module,
    tokens_BL: np.ndarray,
    segment_ids_BL: np.ndarray,
    positions_BL: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """`[B]` float64: sum of log p(x_t | x_<t) over each row's real tokens but each document's first.

    Exact, from one forward pass under the causal mask. Rows run in batches of `batch_size`
    (the last one padded with segment-0 rows), so any number of rows compiles once per length.
    """
    tokens_BL, seg_BL, pos_BL = _trimmed(tokens_BL, segment_ids_BL, positions_BL)
    graphdef, state = nnx.split(model)
    fn = _causal_fn(graphdef)
    B = len(tokens_BL)
    out = []
    for start in range(0, B, batch_size):
        part = [_padded(a[start : start + batch_size], batch_size) for a in (tokens_BL, seg_BL, pos_BL)]
        out.append(fn(state, *part))
    if not out:
        return np.zeros(0)
    return np.concatenate([np.asarray(o, np.float64) for o in out])[:B]


def pseudo_log_likelihood(
    model: nnx.Module,
    tokens_BL: np.ndarray,
    segment_ids_BL: np.ndarray,
    positions_BL: np.ndarray,
    *,
    mask_id: int,
    special_ids: Sequence[int],
    mask_kind: str = "bidirectional",
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """`[B]` float64: sum over real non-special tokens of log p(x_t | x_-t), x_t masked (Salazar et al.).

    Every real token not in `special_ids` (so not bos, eos, ...) is replaced by `mask_id` in its
    own copy of its row; special and padding tokens are context only. The copies of all rows are run
    `chunk` at a time (the last chunk padded with copies that are discarded), so the result does
    not depend on `chunk` and one compile serves every batch of a given row length.
    """
    if mask_kind != "bidirectional":
        raise ValueError(f"pseudo-log-likelihood needs a bidirectional model, not mask_kind={mask_kind!r}")
    tokens_BL, seg_BL, pos_BL = _trimmed(tokens_BL, segment_ids_BL, positions_BL)
    rows_M, at_M = np.nonzero(~np.isin(tokens_BL, special_ids) & (seg_BL != 0))  # one masked copy each
    graphdef, state = nnx.split(model)
    fn = _masked_fn(graphdef, int(mask_id))
    M = len(rows_M)
    out = []
    for start in range(0, M, chunk):
        rows_C = _padded(rows_M[start : start + chunk], chunk)
        at_C = _padded(at_M[start : start + chunk], chunk)
        target_C = tokens_BL[rows_C, at_C]
        out.append(fn(state, tokens_BL[rows_C], seg_BL[rows_C], pos_BL[rows_C], at_C, target_C))
    score_B = np.zeros(len(tokens_BL))
    if out:
        np.add.at(score_B, rows_M, np.concatenate([np.asarray(o, np.float64) for o in out])[:M])
    return score_B


def score_sequences(
    model: nnx.Module,
    mask_kind: str,
    tokens: np.ndarray,
    segment_ids: np.ndarray,
    positions: np.ndarray,
    *,
    mask_id: int | None = None,
    special_ids: Sequence[int] = (),
    batch_size: int = DEFAULT_BATCH,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """`[B]` scores, higher = more likely, by the model's own kind of likelihood.

    - "causal" (GPT): `causal_log_likelihood`.
    - "bidirectional" (BERT): `pseudo_log_likelihood`.
    - "prefix" (prefix LM, hybrid GPT-BERT): `causal_log_likelihood` with an empty prefix, i.e.
      under the causal mask. These models are trained on next-token targets, and an empty
      prefix (hybrid's causal rows; a prefix LM's split after `<bos>`, where a one-token prefix
      is causal too) is inside their training distribution. It gives an exact chain-rule
      log-likelihood, the same quantity a GPT is scored with, where any non-empty prefix
      would leave the prefix tokens unscored.
    """
    if mask_kind in ("causal", "prefix"):
        return causal_log_likelihood(model, tokens, segment_ids, positions, batch_size=batch_size)
    if mask_kind == "bidirectional":
        if mask_id is None:
            raise ValueError("scoring a bidirectional model needs the vocabulary's mask_id and special_ids")
        return pseudo_log_likelihood(
            model, tokens, segment_ids, positions, mask_id=mask_id, special_ids=special_ids, chunk=chunk
        )
    raise ValueError(f"mask kind {mask_kind!r} is not one of ('causal', 'bidirectional', 'prefix')")


def pair_wins(good_B: np.ndarray, bad_B: np.ndarray) -> np.ndarray:
    """`[B]`: 1 where the good row scores higher, 0.5 on a tie, 0 otherwise."""
    return np.where(good_B > bad_B, 1.0, np.where(good_B == bad_B, 0.5, 0.0))


def minimal_pair_accuracy(
    model: nnx.Module, mask_kind: str, good_rows: Rows, bad_rows: Rows, **score_kwargs
) -> float:
    """Fraction of pairs whose good row scores above its bad row (ties count half)."""
    n = len(good_rows["tokens"])
    if len(bad_rows["tokens"]) != n:
        raise ValueError(f"{n} good rows but {len(bad_rows['tokens'])} bad rows")
    if n == 0:
        raise ValueError("no minimal pairs to score")
    # One call over both halves: one compile, full chunks.
    keys = ("tokens", "segment_ids", "positions")
    tokens, seg, pos = (np.concatenate([good_rows[k], bad_rows[k]]) for k in keys)
    s = score_sequences(model, mask_kind, tokens, seg, pos, **score_kwargs)
    return float(pair_wins(s[:n], s[n:]).mean())
