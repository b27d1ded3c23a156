"""The peak FLOP/s a benchmark's MFU is measured against: a vendor's dense bf16 figure for a
known accelerator, otherwise a measured large matmul (float32 on CPU, bf16 elsewhere)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
DEVICE_PEAKS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def matmul_peak(dtype: jnp.dtype = jnp.float32, n: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of a large square matmul on the default device (the best of `repeats`)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of `fn` (which waits for its device work itself)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def device_peak() -> tuple[float, str]:
    """(peak FLOP/s of all devices, where the figure comes from)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return matmul_peak(jnp.float32), "measured float32 matmul (2048^3)"
    for kind, peak in DEVICE_PEAKS.items():
        if kind.lower() in device.device_kind.lower():
            return peak * jax.device_count(), f"{device.device_kind} bf16 data sheet x {jax.device_count()}"
    return matmul_peak(jnp.bfloat16, 8192) * jax.device_count(), "measured bf16 matmul (8192^3)"
