"""Forward + backward time of one attention layer's core, per implementation, on this device.

    python -m experiments.bench.attention --batch 16 --seq_len 256 --heads 4 --head_dim 64

Times `Attention.attend` (queries, keys, values -> output projection input) under a causal mask
for each `model.attention_impl` that runs here ("cudnn" only on GPU), with the gradient taken
with respect to queries, keys and values; and the written-out attention given the causal mask's
`key_limits` (the key blocks above the diagonal skipped, as a causal train step does on CPU).
Prints one JSON line of median milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from models.masks import key_limits, make_attention_mask
from models.transformer import ATTENTION_IMPLS, Attention, TransformerConfig
from train.devices.startup import before_jax_starts


def time_attention(
    impl: str, B: int, L: int, N: int, H: int, limits: tuple[int, ...] | None = None, repeats: int = 9
) -> float:
    cfg = TransformerConfig(
        vocab_size=8, d_model=N * H, num_heads=N, num_layers=1, mlp_dim=8, max_len=L, attention_impl=impl
    )
    attention = Attention(cfg, rngs=nnx.Rngs(0))
    q, k, v = (jax.random.normal(key, (B, L, N, H)) for key in jax.random.split(jax.random.PRNGKey(0), 3))
    mask = make_attention_mask("causal", jnp.ones((B, L), jnp.int32))
    graphdef, state = nnx.split(attention)

    def loss(q, k, v):
        return nnx.merge(graphdef, state).attend(q, {"k": k, "v": v}, mask, limits).sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    jax.block_until_ready(grad(q, k, v))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(q, k, v))
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    before_jax_starts()  # train/devices/startup.py
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=64)
    args = parser.parse_args(argv)
    on_gpu = jax.devices()[0].platform == "gpu"
    # "auto" is one of the others; "cudnn" runs on GPU only.
    impls = [i for i in ATTENTION_IMPLS if i != "auto" and (i != "cudnn" or on_gpu)]
    shape = (args.batch, args.seq_len, args.heads, args.head_dim)
    result = {"platform": jax.devices()[0].platform, "shape_BLNH": shape}
    result.update({f"{impl}_ms": time_attention(impl, *shape) for impl in impls})
    limits = key_limits("causal", args.seq_len)
    if limits:
        result["einsum_key_limits_ms"] = time_attention("einsum", *shape, limits)
        result["key_limits"] = limits
    print(json.dumps(result))


if __name__ == "__main__":
    main()
