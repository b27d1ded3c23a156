"""Objectives as data transforms plus a loss, outside the model.

A data batch is `{"tokens", "segment_ids", "positions"}`, each `[B, L]` int32 (segment 0 is
padding). An objective's `transform(batch, rng)` is a pure function returning the model inputs
and targets; `scores(model, batch, mask_kind)` sums their loss. The attention mask is not the
objective's business: it comes from `config.mask` (checked against `OBJECTIVE_MASKS`) and is
built by `models.masks`. `oracle` names the exact HMM optimum an eval loss is comparable with.

- CLM (GPT): every real position predicts the next token of its document.
- MLM (BERT): exactly `round(rate * eligible)` non-special tokens per row are selected (as in
  BERT's data pipeline, so the rate does not fluctuate per batch); `mask_frac` of them become
  [MASK], `random_frac` a random real token, the rest stay. Only selected positions are scored
  and go through the vocabulary projection.
- Prefix LM (T5's): each row is split at a uniformly random point; the prefix attends
  bidirectionally, and only next-token targets after the split are scored.
- Hybrid (GPT-BERT, Charpentier & Samuel 2024): a fraction of the rows are causal LM rows; the
  others are masked as for MLM, attend bidirectionally, and predict each masked token from the
  position before it, so both kinds share one shifted head. Per-row causality is data.
- Seq2seq: the encoder reads the source bidirectionally; the decoder reads [BOS, y, EOS]
  causally and predicts each next token. Exact match counts the rows whose every target is the
  argmax: exactly the rows greedy decoding reproduces.
"""

from __future__ import annotations

from typing import Any

from train.objectives.base import Batch, NextToken
from train.objectives.language import CausalLM, HybridLM, MaskedLM, PrefixLM
from train.objectives.seq2seq import Seq2Seq
from train.tokenizer.vocab import DEFAULT, Specials

__all__ = ["Batch", "CausalLM", "HybridLM", "MaskedLM", "NextToken", "Objective", "PrefixLM", "Seq2Seq"]

Objective = CausalLM | MaskedLM | PrefixLM | HybridLM | Seq2Seq
OBJECTIVE_CLASSES: dict[str, type] = {c.name: c for c in (CausalLM, MaskedLM, PrefixLM, HybridLM, Seq2Seq)}
OBJECTIVES: tuple[str, ...] = tuple(OBJECTIVE_CLASSES)
# The attention masks each objective can be trained under; the first is its config file's.
OBJECTIVE_MASKS: dict[str, tuple[str, ...]] = {name: c.masks for name, c in OBJECTIVE_CLASSES.items()}


def make_objective(config: Any, vocab_size: int, specials: Specials = DEFAULT) -> Objective:
    """The objective of `config` over a vocabulary of `vocab_size` ids whose specials are `specials`."""
    if config.objective not in OBJECTIVE_CLASSES:
        raise ValueError(f"objective={config.objective!r} is not one of {OBJECTIVES}")
    return OBJECTIVE_CLASSES[config.objective].from_config(config, vocab_size, specials)
