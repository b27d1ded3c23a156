"""A fingerprint of the train state: one 32-bit checksum per array, computed on device.

Saved with every checkpoint and checked after every restore, so a checkpoint whose bytes
changed after Orbax committed it (a flipped bit on disk, a bad copy) is caught instead of
trained on. Each array's checksum is the sum over its elements' bit patterns times odd,
position-dependent weights, modulo 2^32: multiplying by an odd number is a bijection modulo
2^32, so any change to a single element always changes the checksum, and moved values do too.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _checksum(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
    bits = jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize]).astype(jnp.uint32).reshape(-1)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.sum(bits * (weights | jnp.uint32(1)), dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: jax.tree.map(_checksum, tree))


def _name(key: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def fingerprint(tree: Any) -> dict[str, int]:
    """`{"params/blocks/0/attn/query/kernel": checksum, ...}`: paths the same for a TrainState
    and for a dict with the same fields, so a partial restore can check the arrays it read."""
    sums = _checksums(tree)
    leaves, _ = jax.tree_util.tree_flatten_with_path(sums)
    # Replicated scalars: any process's local copy is the value (no cross-process fetch).
    return {
        "/".join(_name(k) for k in path): int(np.asarray(s.addressable_shards[0].data)) for path, s in leaves
    }


def changed_arrays(saved: dict[str, int], restored: dict[str, int]) -> list[str]:
    """The arrays whose checksum differs from the saved one (only those both sides have)."""
    return sorted(k for k in restored if k in saved and saved[k] != restored[k])
