"""Per-layer statistics of a train step (`--config.log_layer_stats=True`), inside the jitted step.

Parameters are grouped per block and per kind: a leaf under the i-th block (`blocks[i]`, or row
i of the stacked `blocks.layers` of a scanned stack) belongs to group `blocks{i}/{kind}`, `kind`
being the module path inside the block (`attn_query`, `attn_key`, `attn_value`, `attn_out`,
`mlp_up`, `mlp_down`, `attn_norm`, `mlp_norm`, ...); other leaves to their module path (`embed`,
`positions`, `final_norm`, `head_dense`, ...). Per group: the parameter norm, the gradient norm
and the update-to-parameter ratio ||update|| / ||parameter before the update||.

They are computed only at the steps that log (a `lax.cond` on the step number; zeros otherwise),
returned with the step's metrics and read by the host where it reads metrics anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

STATS = ("param_norm", "grad_norm", "update_ratio")


def _key(k: Any) -> str | int:
    return k.key if hasattr(k, "key") else k.idx if hasattr(k, "idx") else str(k)


def _slices(path: tuple, leaf: jax.Array) -> list[tuple[str, Callable[[jax.Array], jax.Array]]]:
    """(group, function from the leaf to its sum of squares in that group) for one leaf."""
    keys = [_key(k) for k in path]
    square_sum = lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)))  # noqa: E731
    if "layers" in keys:  # a scanned stack: axis 0 is the layer
        at = keys.index("layers")
        prefix, kind = "_".join(map(str, keys[:at])), "_".join(map(str, keys[at + 1 : -1]))
        return [(f"{prefix}{i}/{kind}", lambda x, i=i: square_sum(x[i])) for i in range(leaf.shape[0])]
    index = next((n for n, k in enumerate(keys) if isinstance(k, int)), None)
    if index is None:
        return [("_".join(map(str, keys[:-1])) or str(keys[0]), square_sum)]
    prefix, kind = "_".join(map(str, keys[:index])), "_".join(map(str, keys[index + 1 : -1]))
    return [(f"{prefix}{keys[index]}/{kind}", square_sum)]


def layer_stats(params: Any, grads: Any, updates: Any) -> dict[str, dict[str, jax.Array]]:
    """`{group: {"param_norm", "grad_norm", "update_ratio"}}` as float32 scalars."""
    sums: dict[str, list[jax.Array]] = {}
    leaves = zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(grads),
        jax.tree.leaves(updates),
        strict=True,
    )
    for (path, p), g, u in leaves:
        for group, square_sum in _slices(path, p):
            acc = sums.setdefault(group, [jnp.zeros((), jnp.float32)] * 3)
            sums[group] = [acc[0] + square_sum(p), acc[1] + square_sum(g), acc[2] + square_sum(u)]
    return {
        group: {
            "param_norm": jnp.sqrt(p2),
            "grad_norm": jnp.sqrt(g2),
            "update_ratio": jnp.sqrt(u2) / jnp.maximum(jnp.sqrt(p2), 1e-12),
        }
        for group, (p2, g2, u2) in sums.items()
    }


def at_log_steps(
    params: Any, grads: Any, updates: Any, step: jax.Array, every: int, last: int
) -> dict[str, dict[str, jax.Array]]:
    """`layer_stats` where the step after this update logs (`step % every == 0` or the last), else zeros."""
    operands = (params, grads, updates)
    logs = (step % every == 0) | (step == last)

    def zeros(ops):
        shapes = jax.eval_shape(lambda o: layer_stats(*o), ops)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    return jax.lax.cond(logs, lambda o: layer_stats(*o), zeros, operands)
