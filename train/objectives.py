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
- Prefix LM (T5's): each row is split at a uniformly random point; the prefix attends
  bidirectionally (mask "prefix"), the rest causally, and only next-token targets after the
  split are scored (a prefix token's own target is visible to it).
- Hybrid (GPT-BERT, Charpentier & Samuel 2024): a fraction of the rows are causal LM rows; the
  others are masked as for MLM, attend bidirectionally, and predict each masked token from the
  position before it ("masked next-token prediction"), so both row kinds share one shifted
  output head. Per-row causality is data: the prefix flag is all-False or all-True per row.

- Seq2seq (an encoder-decoder's): the source goes to the encoder under a bidirectional mask;
  the decoder reads the target row [BOS, y_1 .. y_n, EOS] under `config.mask` (causal) and
  predicts each next token, cross-attending to the source. Exact match counts the rows whose
  every target is the argmax: exactly the rows greedy decoding reproduces.

`oracle` names the exact HMM optimum an objective's eval loss is comparable with.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax

from models.masks import make_attention_mask, make_cross_mask
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
    # "The target has the top logit" (ties count as right): a max over the vocabulary, which
    # XLA shares with the softmax's, where an argmax is a separate pass (7% of a CPU step).
    target_logit_x = jnp.take_along_axis(logits_xV, targets_x[..., None], axis=-1)[..., 0]
    correct = (target_logit_x >= logits_xV.max(-1)).astype(jnp.float32)
    return {"nll_sum": (nll * w).sum(), "correct_sum": (correct * w).sum(), "weight_sum": w.sum()}


def _next_token_scores(model: LanguageModel, batch: Batch, mask_kind: str) -> dict[str, jnp.ndarray]:
    h_BLD = _forward_hidden(model, batch, mask_kind)
    return _scores(model.logits(h_BLD), batch["targets"], batch["weights"])


def _next_token_targets(tokens_BL, seg_BL) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(token t+1 at position t, whether it belongs to the same real document)."""
    next_seg_BL = jnp.pad(seg_BL[:, 1:], ((0, 0), (0, 1)))
    return jnp.pad(tokens_BL[:, 1:], ((0, 0), (0, 1))), (seg_BL != 0) & (next_seg_BL == seg_BL)


def _shifted(weights_BL) -> jnp.ndarray:
    """Which tokens a next-token batch predicts: position t scores token t+1."""
    return jnp.pad(weights_BL[:, :-1], ((0, 0), (1, 0)))


@dataclasses.dataclass(frozen=True)
class CausalLM:
    name: str = "clm"
    oracle: str = "clm"

    def transform(self, batch: Batch, rng: jax.Array | None = None) -> Batch:
        del rng  # deterministic
        tokens, seg = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])
        targets, weights = _next_token_targets(tokens, seg)
        return {
            "inputs": tokens,
            "segment_ids": seg,
            "positions": batch["positions"],
            "targets": targets,
            "weights": weights,
        }

    def scores(self, model: LanguageModel, batch: Batch, mask_kind: str) -> dict[str, jnp.ndarray]:
        return _next_token_scores(model, batch, mask_kind)

    def scored_tokens(self, batch: Batch) -> jnp.ndarray:
        """`[B, L]` bool: which tokens of the row are predicted (input t predicts token t+1)."""
        return _shifted(batch["weights"])


@dataclasses.dataclass(frozen=True)
class MaskedLM:
    vocab_size: int
    rate: float = 0.15
    mask_frac: float = 0.8
    random_frac: float = 0.1
    name: str = "mlm"
    oracle: str = "mlm"

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


@dataclasses.dataclass(frozen=True)
class PrefixLM:
    name: str = "prefix_lm"
    oracle: str = "clm"  # targets after the split see exactly their left context

    def transform(self, batch: Batch, rng: jax.Array) -> Batch:
        tokens, seg = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])
        B, L = tokens.shape
        n_real_B = (seg != 0).sum(1)
        # At least one prefix token (BOS) and one target: split in [1, n_real - 1].
        u_B = jax.random.uniform(rng, (B,))
        split_B = 1 + jnp.floor(u_B * jnp.maximum(n_real_B - 1, 1)).astype(jnp.int32)
        prefix_BL = jnp.arange(L)[None, :] < split_B[:, None]
        targets, weights = _next_token_targets(tokens, seg)
        return {
            "inputs": tokens,
            "segment_ids": seg,
            "positions": batch["positions"],
            "prefix": prefix_BL,
            "targets": targets,
            # Position t's target t+1 must lie after the split, else t sees it.
            "weights": weights & ~jnp.pad(prefix_BL[:, 1:], ((0, 0), (0, 1)), constant_values=False),
        }

    def scores(self, model: LanguageModel, batch: Batch, mask_kind: str) -> dict[str, jnp.ndarray]:
        return _next_token_scores(model, batch, mask_kind)

    def scored_tokens(self, batch: Batch) -> jnp.ndarray:
        return _shifted(batch["weights"])


@dataclasses.dataclass(frozen=True)
class HybridLM:
    """Causal rows and masked-next-token rows in one batch; `causal_fraction` of rows are causal."""

    vocab_size: int
    causal_fraction: float = 0.5
    rate: float = 0.15
    mask_frac: float = 0.8
    random_frac: float = 0.1
    name: str = "hybrid"

    @property
    def oracle(self) -> str | None:
        return {1.0: "clm", 0.0: "mlm"}.get(float(self.causal_fraction))

    def for_eval(self) -> HybridLM:
        """The causal view: every row next-token, comparable with GPT and the CLM optimum."""
        return dataclasses.replace(self, causal_fraction=1.0)

    def masked_view(self) -> HybridLM:
        """Every row masked, all selected tokens [MASK]: comparable with the MLM optimum."""
        return dataclasses.replace(self, causal_fraction=0.0, mask_frac=1.0, random_frac=0.0)

    def transform(self, batch: Batch, rng: jax.Array) -> Batch:
        tokens, seg = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])
        B, L = tokens.shape
        rows_rng, mask_rng = jax.random.split(rng)
        # Exactly round(fraction * B) causal rows, so the mix does not fluctuate per batch.
        n_causal = round(self.causal_fraction * B)
        rank_B = jnp.argsort(jnp.argsort(jax.random.uniform(rows_rng, (B,))))
        causal_B = rank_B < n_causal

        mlm = MaskedLM(self.vocab_size, self.rate, self.mask_frac, self.random_frac)
        masked = mlm.transform(batch, mask_rng)
        selected_BL = mlm.scored_tokens(masked)
        targets, next_ok_BL = _next_token_targets(tokens, seg)
        selected_next_BL = jnp.pad(selected_BL[:, 1:], ((0, 0), (0, 1)))
        return {
            "inputs": jnp.where(causal_B[:, None], tokens, masked["inputs"]),
            "segment_ids": seg,
            "positions": batch["positions"],
            "prefix": jnp.broadcast_to(~causal_B[:, None], (B, L)),
            "targets": targets,
            "weights": next_ok_BL & (causal_B[:, None] | selected_next_BL),
        }

    def scores(self, model: LanguageModel, batch: Batch, mask_kind: str) -> dict[str, jnp.ndarray]:
        return _next_token_scores(model, batch, mask_kind)

    def scored_tokens(self, batch: Batch) -> jnp.ndarray:
        return _shifted(batch["weights"])


@dataclasses.dataclass(frozen=True)
class Seq2Seq:
    name: str = "seq2seq"
    oracle: str | None = None

    def transform(self, batch: Batch, rng: jax.Array | None = None) -> Batch:
        del rng  # deterministic: the data source made the (source, target) pairs
        tokens, seg = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])
        targets, weights = _next_token_targets(tokens, seg)
        return {
            "src_tokens": batch["src_tokens"],
            "src_segment_ids": batch["src_segment_ids"],
            "src_positions": batch["src_positions"],
            "inputs": tokens,
            "segment_ids": seg,
            "positions": batch["positions"],
            "targets": targets,
            "weights": weights,
        }

    def logits(self, model: Any, batch: Batch, mask_kind: str) -> jnp.ndarray:
        src_mask_B1SS = make_attention_mask("bidirectional", batch["src_segment_ids"])
        mask_B1TT = make_attention_mask(mask_kind, batch["segment_ids"])
        cross_mask_B1TS = make_cross_mask(batch["segment_ids"], batch["src_segment_ids"])
        memory = model.encode_source(batch["src_tokens"], src_mask_B1SS, batch["src_positions"])
        h_BTD = model.decode(memory, batch["inputs"], mask_B1TT, batch["positions"], cross_mask_B1TS)
        return model.logits(h_BTD)

    def scores(self, model: Any, batch: Batch, mask_kind: str) -> dict[str, jnp.ndarray]:
        logits_BTV = self.logits(model, batch, mask_kind)
        scores = _scores(logits_BTV, batch["targets"], batch["weights"])
        target_logit_BT = jnp.take_along_axis(logits_BTV, batch["targets"][..., None], axis=-1)[..., 0]
        wrong_BT = (target_logit_BT < logits_BTV.max(-1)) & batch["weights"]
        has_target_B = batch["weights"].any(1)
        scores["exact_sum"] = (has_target_B & ~wrong_BT.any(1)).sum().astype(jnp.float32)
        scores["rows_sum"] = has_target_B.sum().astype(jnp.float32)
        return scores

    def scored_tokens(self, batch: Batch) -> jnp.ndarray:
        return _shifted(batch["weights"])


Objective = CausalLM | MaskedLM | PrefixLM | HybridLM | Seq2Seq
OBJECTIVES: tuple[str, ...] = ("clm", "mlm", "prefix_lm", "hybrid", "seq2seq")
# The attention mask each objective is built for; "prefix" carries per-row prefix flags.
OBJECTIVE_MASKS: dict[str, str] = {
    "clm": "causal",
    "mlm": "bidirectional",
    "prefix_lm": "prefix",
    "hybrid": "prefix",
    "seq2seq": "causal",  # the decoder's; the encoder's is always bidirectional
}


def make_objective(config: Any, vocab_size: int) -> Objective:
    m = config.mlm
    if config.objective == "clm":
        return CausalLM()
    if config.objective == "mlm":
        return MaskedLM(vocab_size, rate=m.rate, mask_frac=m.mask_frac, random_frac=m.random_frac)
    if config.objective == "prefix_lm":
        return PrefixLM()
    if config.objective == "seq2seq":
        return Seq2Seq()
    if config.objective == "hybrid":
        return HybridLM(
            vocab_size,
            causal_fraction=config.hybrid.causal_fraction,
            rate=m.rate,
            mask_frac=m.mask_frac,
            random_frac=m.random_frac,
        )
    raise ValueError(f"objective={config.objective!r} is not one of {OBJECTIVES}")
