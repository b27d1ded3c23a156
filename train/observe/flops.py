"""Model FLOPs of a train step, counted from the config (matmuls only, 2 FLOPs per multiply-add).

Forward + backward = 3x forward. Per row of L tokens: every token pays the block weights
(2 x non-embedding parameters), attention pays QK^T and AV (2 x 2 x L x d_model per token and
layer when every key is computed, half of that if a causal mask's upper triangle is counted as
free), and the tied vocabulary projection is paid at every position by next-token objectives and
at the K gathered positions by the masked LM. Embedding and position lookups cost no matmul.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from train.devices.chips import chip_of


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
    """Model FLOPs of one train step (forward + backward = 3 x forward): matmuls of the
    non-embedding parameters and of attention per token, plus the output head at the
    `head_positions` scored per row (all of them, or only the masked ones)."""
    m, L, B = config.model, config.seq_len, config.batch_size
    attention = 2 * 2 * L * m.d_model * m.num_layers * (0.5 if causal_attention_halved else 1.0)
    per_token = 2 * num_params_non_embedding + attention
    forward = B * (L * per_token + head_positions * 2 * m.d_model * vocab_size)
    return 3.0 * forward


def step_flops(
    config: Any, objective: Any, params: Any, vocab_size: int, *, causal_attention_halved: bool = False
) -> float:
    """Model FLOPs of one train step of `config` (the count MFU is defined by, in training, the
    benchmark and the comparison alike): the masked LM projects only its selected positions."""
    from train.objectives import MaskedLM

    head = objective.max_predictions(config.seq_len) if isinstance(objective, MaskedLM) else config.seq_len
    n = non_embedding_params(params)
    return train_flops_per_step(config, n, vocab_size, head, causal_attention_halved=causal_attention_halved)


@functools.cache
def matmul_peak(dtype: Any = "float32", n: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of a large square matmul on the default device (the best of `repeats`).
    Measured once per process: the rows of one benchmark share one denominator."""
    import time

    # A 256 x 256 block of NumPy normals tiled on the device: compiling jax.random's sampler
    # cost a run's start more than the timing, and drawing all n^2 on the host takes seconds at
    # the accelerators' n = 8192.
    block = jnp.asarray(np.random.default_rng(0).standard_normal((256, 256), np.float32), dtype)
    reps = -(-n // 256)
    a = jnp.tile(block, (reps, reps))[:n, :n]
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak(per_device: float = 0.0, *, matmul_n: int = 2048, repeats: int = 10) -> tuple[float, str]:
    """(peak FLOP/s of all devices, where the figure comes from): `per_device` if given, else a
    data-sheet figure for a known accelerator, else a measured matmul (float32 on CPU)."""
    device, count = jax.devices()[0], jax.device_count()
    if per_device > 0:
        return per_device * count, f"set: {per_device:.3g} FLOP/s x {count}"
    if device.platform == "cpu":
        return matmul_peak("float32", matmul_n, repeats), f"measured float32 matmul ({matmul_n}^3)"
    chip = chip_of(device.device_kind)
    if chip is not None:
        return chip.bf16_flops * count, f"{device.device_kind} bf16 data sheet x {count}"
    return matmul_peak("bfloat16", 8192, repeats) * count, "measured bf16 matmul (8192^3)"
