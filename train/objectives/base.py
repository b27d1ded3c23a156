"""What every objective shares: scores as sums, next-token targets, and the next-token base class."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import jax.numpy as jnp
import optax

from models.masks import key_limits, make_segment_mask
from train.objectives.vocab_loss import chunk_positions, chunked_scores
from train.tokenizer.vocab import DEFAULT, Specials

Batch = dict[str, jnp.ndarray]


class LanguageModel(Protocol):
    """What an objective needs of a model (the Transformer and the LSTM both provide it)."""

    def hidden_states(self, tokens_BL, mask_B1LL, positions_BL, *, key_limits=None) -> jnp.ndarray: ...

    def logits(self, h_xD) -> jnp.ndarray: ...


def hidden_states(model: LanguageModel, batch: Batch, mask_kind: str) -> jnp.ndarray:
    mask = make_segment_mask(mask_kind, batch["segment_ids"], prefix_BL=batch.get("prefix"))
    limits = key_limits(mask_kind, batch["inputs"].shape[1])
    return model.hidden_states(batch["inputs"], mask, batch["positions"], key_limits=limits)


def token_scores(logits_xV, targets_x, weights_x) -> dict[str, jnp.ndarray]:
    """Sums (not means), so eval can add them over batches and devices exactly."""
    w = weights_x.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits_xV, targets_x)
    # "The target has the top logit" (ties count as right): a max over the vocabulary, which
    # XLA shares with the softmax's, where an argmax is a separate pass (7% of a CPU step).
    target_logit_x = jnp.take_along_axis(logits_xV, targets_x[..., None], axis=-1)[..., 0]
    correct = (target_logit_x >= logits_xV.max(-1)).astype(jnp.float32)
    return {"nll_sum": (nll * w).sum(), "correct_sum": (correct * w).sum(), "weight_sum": w.sum()}


def head_scores(model: Any, h_BxD, targets_Bx, weights_Bx) -> dict[str, jnp.ndarray]:
    """`token_scores` of the model's vocabulary head on hidden states `[B, x, D]`: through its
    full logits, or in chunks (train/objectives/vocab_loss.py) where the model's config says
    `loss_impl="chunked"` and it exposes its projection."""
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "loss_impl", "full") != "chunked" or not hasattr(model, "output_projection"):
        return token_scores(model.logits(h_BxD), targets_Bx, weights_Bx)
    B, X = targets_Bx.shape
    chunk = chunk_positions(cfg.loss_chunk_tokens, B, X)
    nll_sum, correct_Bx = chunked_scores(
        model.head_inputs(h_BxD), *model.output_projection(), targets_Bx, weights_Bx, cfg.dtype, chunk
    )
    w = weights_Bx.astype(jnp.float32)
    return {"nll_sum": nll_sum, "correct_sum": (correct_Bx * w).sum(), "weight_sum": w.sum()}


def next_token_targets(tokens_BL, seg_BL) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(token t+1 at position t, whether it belongs to the same real document)."""
    next_seg_BL = jnp.pad(seg_BL[:, 1:], ((0, 0), (0, 1)))
    return jnp.pad(tokens_BL[:, 1:], ((0, 0), (0, 1))), (seg_BL != 0) & (next_seg_BL == seg_BL)


class NextToken:
    """The next-token objectives: position t predicts token t+1 of its document.

    A subclass writes its `transform` (usually `next_token_batch` plus what differs), the masks
    it can be trained under and why; scoring and the scored tokens are shared.
    """

    name: ClassVar[str]
    # The attention masks the objective can be trained under (the first is its config file's),
    # and what goes wrong under another: `train/config_checks.py` reads both.
    masks: ClassVar[tuple[str, ...]]
    mask_note: ClassVar[str]

    @classmethod
    def from_config(cls, config: Any, vocab_size: int, specials: Specials = DEFAULT) -> NextToken:
        return cls()  # the objectives with fields override this

    @staticmethod
    def next_token_batch(batch: Batch) -> Batch:
        tokens, seg = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])
        targets, weights = next_token_targets(tokens, seg)
        return {
            "inputs": tokens,
            "segment_ids": seg,
            "positions": batch["positions"],
            "targets": targets,
            "weights": weights,
        }

    def scores(self, model: Any, batch: Batch, mask_kind: str) -> dict[str, jnp.ndarray]:
        h_BLD = hidden_states(model, batch, mask_kind)
        return head_scores(model, h_BLD, batch["targets"], batch["weights"])

    def scored_tokens(self, batch: Batch) -> jnp.ndarray:
        """`[B, L]` bool: which tokens of the row are predicted (input t predicts token t+1)."""
        return jnp.pad(batch["weights"][:, :-1], ((0, 0), (1, 0)))
