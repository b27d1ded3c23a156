"""Model FLOPs of a train step, counted from the config (matmuls only, 2 FLOPs per multiply-add).

Forward + backward = 3x forward. Per row of L tokens: every token pays the block weights
(2 x non-embedding parameters), attention pays QK^T and AV (2 x 2 x L x d_model per token and
layer when every key is computed, half of that if a causal mask's upper triangle is counted as
free), and the tied vocabulary projection is paid at every position by next-token objectives and
at the K gathered positions by the masked LM. Embedding and position lookups cost no matmul.
"""

from __future__ import annotations

from typing import Any

import jax


def non_embedding_params(params: Any) -> int:
    total = sum(int(x.size) for x in jax.tree.leaves(params))
    lookups = jax.tree.leaves({k: params[k] for k in ("embed", "positions") if k in params})
    return total - sum(int(x.size) for x in lookups)


def train_flops_per_step(
    config: Any,
    num_params_non_embedding: int,
    vocab_size: int,
    head_positions: int,
    *,
    causal_attention_halved: bool = False,
) -> float:
    m, L, B = config.model, config.seq_len, config.batch_size
    attention = 2 * 2 * L * m.d_model * m.num_layers * (0.5 if causal_attention_halved else 1.0)
    per_token = 2 * num_params_non_embedding + attention
    forward = B * (L * per_token + head_positions * 2 * m.d_model * vocab_size)
    return 3.0 * forward
