"""Objectives as data transforms plus a loss, outside the model.

A data batch is `{"tokens", "segment_ids", "positions"}`, each `[B, L]` int32 (segment 0 is
padding). An objective's `transform(batch, rng)` is a pure function that returns the model
inputs and the targets; `loss(model, batch, mask_kind)` scores them. The attention mask is not
the objective's business: it comes from `config.mask` and is built by `models.masks`.

- CLM (GPT): targets are the next token of the same document; every real position is scored.
- MLM (BERT): a fixed fraction of the non-special tokens of each row is selected (exactly
  `round(rate * eligible)` per row, as in BERT's data pipeline, so the rate does not fluctuate
  per batch); of those, `mask_frac` become [MASK], `random_frac` a random real token and the
  rest stay. Only selected positions are scored, and only their hidden states go through the
  vocabulary projection.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax

from models.masks import make_attention_mask
from train.data.vocab import MASK_ID, NUM_SPECIAL

Batch = dict[str, jnp.ndarray]


class LanguageModel(Protocol):
    """What an objective needs of a model (the Transformer and the LSTM both provide it)."""

    def encode(self, tokens_BL, mask_B1LL, positions_BL) -> jnp.ndarray: ...

    def logits(self, h_xD) -> jnp.ndarray: ...


def _forward_hidden(model: LanguageModel, batch: Batch, mask_kind: str) -> jnp.ndarray:
    mask_B1LL = make_attention_mask(mask_kind, batch["segment_ids"], prefix_BL=batch.get("prefix"))
    return model.encode(batch["inputs"], mask_B1LL, batch["positions"])


def _scores(logits_xV, targets_x, weights_x) -> dict[str, jnp.ndarray]:
    """Sums (not means), so eval can add them over batches and devices exactly."""
    w = weights_x.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits_xV, targets_x)
    correct = (jnp.argmax(logits_xV, -1) == targets_x).astype(jnp.float32)
    return {"nll_sum": (nll * w).sum(), "correct_sum": (correct * w).sum(), "weight_sum": w.sum()}


@dataclasses.dataclass(frozen=True)
class CausalLM:
    name: str = "clm"

    def transform(self, batch: Batch, rng: jax.Array | None = None) -> Batch:
        del rng  # deterministic
        tokens, seg = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])
        next_seg = jnp.pad(seg[:, 1:], ((0, 0), (0, 1)))
        return {
            "inputs": tokens,
            "segment_ids": seg,
            "positions": batch["positions"],
            "targets": jnp.pad(tokens[:, 1:], ((0, 0), (0, 1))),
            "weights": (seg != 0) & (next_seg == seg),
        }

    def scores(self, model: LanguageModel, batch: Batch, mask_kind: str) -> dict[str, jnp.ndarray]:
        h_BLD = _forward_hidden(model, batch, mask_kind)
        return _scores(model.logits(h_BLD), batch["targets"], batch["weights"])

    def scored_tokens(self, batch: Batch) -> jnp.ndarray:
        """`[B, L]` bool: which tokens of the row are predicted (input t predicts token t+1)."""
        return jnp.pad(batch["weights"][:, :-1], ((0, 0), (1, 0)))


@dataclasses.dataclass(frozen=True)
class MaskedLM:
    vocab_size: int
    rate: float = 0.15
    mask_frac: float = 0.8
    random_frac: float = 0.1
    name: str = "mlm"

    def max_predictions(self, seq_len: int) -> int:
        return max(1, math.ceil(self.rate * seq_len))

    def for_eval(self) -> MaskedLM:
        """One fixed pattern in which every selected token is [MASK]: what the HMM oracle scores."""
        return dataclasses.replace(self, mask_frac=1.0, random_frac=0.0)

    def transform(self, batch: Batch, rng: jax.Array) -> Batch:
        tokens, seg = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])
        B, L = tokens.shape
        K = self.max_predictions(L)
        select_rng, action_rng, random_rng = jax.random.split(rng, 3)

        eligible_BL = (tokens >= NUM_SPECIAL) & (seg != 0)
        # Random scores rank the eligible tokens first; the top `n_select` of each row are chosen.
        score_BL = jnp.where(eligible_BL, jax.random.uniform(select_rng, (B, L)), -1.0)
        _, idx_BK = jax.lax.top_k(score_BL, K)
        n_eligible_B = eligible_BL.sum(1)
        n_select_B = jnp.where(
            n_eligible_B > 0, jnp.maximum(1, jnp.round(self.rate * n_eligible_B)), 0
        ).astype(jnp.int32)
        valid_BK = jnp.arange(K)[None, :] < n_select_B[:, None]

        targets_BK = jnp.take_along_axis(tokens, idx_BK, axis=1)
        u_BK = jax.random.uniform(action_rng, (B, K))
        random_BK = jax.random.randint(random_rng, (B, K), NUM_SPECIAL, self.vocab_size)
        replaced_BK = jnp.where(
            u_BK < self.mask_frac,
            MASK_ID,
            jnp.where(u_BK < self.mask_frac + self.random_frac, random_BK, targets_BK),
        )
        new_BK = jnp.where(valid_BK, replaced_BK, targets_BK)
        inputs = tokens.at[jnp.arange(B)[:, None], idx_BK].set(new_BK)
        return {
            "inputs": inputs,
            "segment_ids": seg,
            "positions": batch["positions"],
            "mlm_positions": idx_BK,
            "targets": targets_BK,
            "weights": valid_BK,
        }

    def scores(self, model: LanguageModel, batch: Batch, mask_kind: str) -> dict[str, jnp.ndarray]:
        h_BLD = _forward_hidden(model, batch, mask_kind)
        h_BKD = jnp.take_along_axis(h_BLD, batch["mlm_positions"][..., None], axis=1)
        return _scores(model.logits(h_BKD), batch["targets"], batch["weights"])

    def scored_tokens(self, batch: Batch) -> jnp.ndarray:
        B = batch["inputs"].shape[0]
        zeros = jnp.zeros(batch["inputs"].shape, bool)
        return zeros.at[jnp.arange(B)[:, None], batch["mlm_positions"]].max(batch["weights"])


Objective = CausalLM | MaskedLM


def make_objective(config: Any, vocab_size: int) -> Objective:
    if config.objective == "clm":
        return CausalLM()
    if config.objective == "mlm":
        return MaskedLM(
            vocab_size=vocab_size,
            rate=config.mlm.rate,
            mask_frac=config.mlm.mask_frac,
            random_frac=config.mlm.random_frac,
        )
    raise ValueError(f"objective={config.objective!r} is not one of ('clm', 'mlm')")
