"""The language-model objectives: CLM (GPT), MLM (BERT), prefix LM (T5's) and the GPT-BERT hybrid."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from models.errors import ConfigError
from train.objectives.base import Batch, LanguageModel, NextToken, head_scores, hidden_states
from train.tokenizer.vocab import DEFAULT, Specials


def _require_mask(specials: Specials, objective: str) -> None:
    if specials.mask is None:
        raise ConfigError(
            f"objective={objective} writes a mask token, and the tokenizer has none (its specials: "
            f"{specials.roles()}); use a tokenizer with one (tokenizer.path) or a causal objective"
        )


@dataclasses.dataclass(frozen=True)
class CausalLM(NextToken):
    """GPT: every position predicts the next token under the causal mask."""

    name: ClassVar[str] = "clm"
    masks: ClassVar[tuple[str, ...]] = ("causal",)
    mask_note: ClassVar[str] = "any other mask lets each position see the token it must predict"
    oracle: str = "clm"

    def transform(self, batch: Batch, rng: jax.Array | None = None) -> Batch:
        del rng  # deterministic
        return self.next_token_batch(batch)


@dataclasses.dataclass(frozen=True)
class MaskedLM:
    """BERT: `rate` of the regular tokens are selected; of those, `mask_frac` become the mask token,
    `random_frac` a random regular token and the rest stay; only selected positions are scored."""

    vocab_size: int
    rate: float = 0.15
    mask_frac: float = 0.8
    random_frac: float = 0.1
    oracle: str = "mlm"
    specials: Specials = DEFAULT  # never selected, never drawn; `specials.mask` is written
    name: ClassVar[str] = "mlm"
    masks: ClassVar[tuple[str, ...]] = ("bidirectional", "causal")
    mask_note: ClassVar[str] = "the 'prefix' mask takes its per-row prefix from 'prefix_lm' or 'hybrid'"

    @classmethod
    def from_config(cls, config: Any, vocab_size: int, specials: Specials = DEFAULT) -> MaskedLM:
        m = config.mlm
        _require_mask(specials, config.objective)
        return cls(vocab_size, m.rate, m.mask_frac, m.random_frac, specials=specials)

    def max_predictions(self, seq_len: int) -> int:
        return max(1, math.ceil(self.rate * seq_len))

    def for_eval(self) -> MaskedLM:
        """One fixed pattern in which every selected token is [MASK]: what the HMM oracle scores."""
        return dataclasses.replace(self, mask_frac=1.0, random_frac=0.0)

    def transform(self, batch: Batch, rng: jax.Array) -> Batch:
        """Selects, corrupts and weights the positions to predict (80/10/10 by default); the
        inputs are the corrupted tokens and the targets the original ones, at the same positions."""
        tokens, seg = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])
        B, L = tokens.shape
        K = self.max_predictions(L)
        select_rng, action_rng, random_rng = jax.random.split(rng, 3)

        eligible_BL = ~jnp.isin(tokens, jnp.asarray(self.specials.ids, tokens.dtype)) & (seg != 0)
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
        regular_R = jnp.asarray(self.specials.regular_ids(self.vocab_size))
        random_BK = regular_R[jax.random.randint(random_rng, (B, K), 0, len(regular_R))]
        replaced_BK = jnp.where(
            u_BK < self.mask_frac,
            self.specials.mask,
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
        # Only the selected positions go through the vocabulary projection.
        h_BLD = hidden_states(model, batch, mask_kind)
        h_BKD = jnp.take_along_axis(h_BLD, batch["mlm_positions"][..., None], axis=1)
        return head_scores(model, h_BKD, batch["targets"], batch["weights"])

    def scored_tokens(self, batch: Batch) -> jnp.ndarray:
        B = batch["inputs"].shape[0]
        zeros = jnp.zeros(batch["inputs"].shape, bool)
        return zeros.at[jnp.arange(B)[:, None], batch["mlm_positions"]].max(batch["weights"])


_PREFIX_NOTE = "the 'prefix' mask takes its per-row prefix from the objective (see configs/{}.py)"


@dataclasses.dataclass(frozen=True)
class PrefixLM(NextToken):
    """T5's prefix LM: each row is split at a random point; the prefix is seen bidirectionally and
    only the tokens after it are predicted, left to right."""

    name: ClassVar[str] = "prefix_lm"
    masks: ClassVar[tuple[str, ...]] = ("prefix",)
    mask_note: ClassVar[str] = _PREFIX_NOTE.format("prefix_lm")
    oracle: str = "clm"  # targets after the split see exactly their left context

    def transform(self, batch: Batch, rng: jax.Array) -> Batch:
        out = self.next_token_batch(batch)
        B, L = out["inputs"].shape
        n_real_B = (out["segment_ids"] != 0).sum(1)
        # At least one prefix token (BOS) and one target: split in [1, n_real - 1].
        u_B = jax.random.uniform(rng, (B,))
        split_B = 1 + jnp.floor(u_B * jnp.maximum(n_real_B - 1, 1)).astype(jnp.int32)
        prefix_BL = jnp.arange(L)[None, :] < split_B[:, None]
        # Position t's target t+1 must lie after the split, else t sees it.
        after_split_BL = ~jnp.pad(prefix_BL[:, 1:], ((0, 0), (0, 1)), constant_values=False)
        return {**out, "prefix": prefix_BL, "weights": out["weights"] & after_split_BL}


@dataclasses.dataclass(frozen=True)
class HybridLM(NextToken):
    """Causal rows and masked-next-token rows in one batch; `causal_fraction` of rows are causal."""

    vocab_size: int
    causal_fraction: float = 0.5
    rate: float = 0.15
    mask_frac: float = 0.8
    random_frac: float = 0.1
    specials: Specials = DEFAULT
    name: ClassVar[str] = "hybrid"
    masks: ClassVar[tuple[str, ...]] = ("prefix",)
    mask_note: ClassVar[str] = _PREFIX_NOTE.format("hybrid")

    @classmethod
    def from_config(cls, config: Any, vocab_size: int, specials: Specials = DEFAULT) -> HybridLM:
        m = config.mlm
        if config.hybrid.causal_fraction < 1.0:
            _require_mask(specials, config.objective)
        return cls(
            vocab_size,
            causal_fraction=config.hybrid.causal_fraction,
            rate=m.rate,
            mask_frac=m.mask_frac,
            random_frac=m.random_frac,
            specials=specials,
        )

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
        out = self.next_token_batch(batch)
        tokens = out["inputs"]
        B, L = tokens.shape
        rows_rng, mask_rng = jax.random.split(rng)
        # Exactly round(fraction * B) causal rows, so the mix does not fluctuate per batch.
        n_causal = round(self.causal_fraction * B)
        rank_B = jnp.argsort(jnp.argsort(jax.random.uniform(rows_rng, (B,))))
        causal_B = rank_B < n_causal

        mlm = MaskedLM(self.vocab_size, self.rate, self.mask_frac, self.random_frac, specials=self.specials)
        masked = mlm.transform(batch, mask_rng)
        selected_next_BL = jnp.pad(mlm.scored_tokens(masked)[:, 1:], ((0, 0), (0, 1)))
        return {
            **out,
            "inputs": jnp.where(causal_B[:, None], tokens, masked["inputs"]),
            "prefix": jnp.broadcast_to(~causal_B[:, None], (B, L)),
            "weights": out["weights"] & (causal_B[:, None] | selected_next_BL),
        }
