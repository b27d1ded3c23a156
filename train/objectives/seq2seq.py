"""The encoder-decoder's objective: next-token prediction of the target, reading the source."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from models.masks import cross_segment_mask, make_segment_mask
from train.objectives.base import Batch, NextToken, token_scores


@dataclasses.dataclass(frozen=True)
class Seq2Seq(NextToken):
    """The encoder-decoder's objective: next-token loss on the target given the whole source
    (bidirectional encoder, causal decoder); eval also reports exact match."""

    name: ClassVar[str] = "seq2seq"
    masks: ClassVar[tuple[str, ...]] = ("causal",)
    mask_note: ClassVar[str] = "the decoder must be causal; the encoder is always bidirectional"
    oracle: str | None = None

    def transform(self, batch: Batch, rng: jax.Array | None = None) -> Batch:
        del rng  # deterministic: the data source made the (source, target) pairs
        sources = {k: batch[k] for k in ("src_tokens", "src_segment_ids", "src_positions")}
        return {**sources, **self.next_token_batch(batch)}

    def logits(self, model: Any, batch: Batch, mask_kind: str) -> jnp.ndarray:
        src_mask = make_segment_mask("bidirectional", batch["src_segment_ids"])
        mask = make_segment_mask(mask_kind, batch["segment_ids"])
        cross_mask = cross_segment_mask(batch["segment_ids"], batch["src_segment_ids"])
        memory = model.encode_source(batch["src_tokens"], src_mask, batch["src_positions"])
        h_BTD = model.decode(memory, batch["inputs"], mask, batch["positions"], cross_mask)
        return model.logits(h_BTD)

    def scores(self, model: Any, batch: Batch, mask_kind: str) -> dict[str, jnp.ndarray]:
        logits_BTV = self.logits(model, batch, mask_kind)
        scores = token_scores(logits_BTV, batch["targets"], batch["weights"])
        target_logit_BT = jnp.take_along_axis(logits_BTV, batch["targets"][..., None], axis=-1)[..., 0]
        wrong_BT = (target_logit_BT < logits_BTV.max(-1)) & batch["weights"]
        has_target_B = batch["weights"].any(1)
        scores["exact_sum"] = (has_target_B & ~wrong_BT.any(1)).sum().astype(jnp.float32)
        scores["rows_sum"] = has_target_B.sum().astype(jnp.float32)
        return scores
