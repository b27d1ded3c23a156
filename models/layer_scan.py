"""Scan over layers (`model.scan_layers=True`): the blocks run as one `jax.lax.scan` body.

XLA then compiles one block, not `num_layers` copies, so compile time stays flat with depth.
The parameters stay one module per layer, the same tree as the Python loop: checkpoints are
interchangeable between the two, and the KV cache, probes and attention maps keep their
per-layer code. At call time each layer's variables are stacked along a new leading axis (one
copy of the block parameters per step, the price of keeping the tree) and each scan iteration
merges one slice back into a block. Non-parameter state (BatchNorm statistics) comes out of the
scan stacked and is written back to each layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _stack(trees: Sequence) -> object:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def scan_blocks(blocks: Sequence[nnx.Module], x_BLD, args: tuple, policy=None, remat: bool = False):
    """(output `[B, L, D]`, the residual stream after each block), as the loop over `blocks`
    computing `x = block(x, *args)` would give; `remat` recomputes each block in the backward
    pass under the checkpoint `policy`."""
    graphdef, _, _ = nnx.split(blocks[0], nnx.Param, ...)
    parts = [nnx.split(block, nnx.Param, ...)[1:] for block in blocks]
    params = _stack([nnx.to_pure_dict(p) for p, _ in parts])
    rest = _stack([nnx.to_pure_dict(r) for _, r in parts])

    def body(x_BLD, layer):
        block = nnx.merge(graphdef, *layer)
        x_BLD = block(x_BLD, *args)
        return x_BLD, (x_BLD, nnx.to_pure_dict(nnx.state(block, nnx.Not(nnx.Param))))

    if remat:
        body = jax.checkpoint(body, policy=policy)
    x_BLD, (states_NBLD, new_rest) = jax.lax.scan(body, x_BLD, (params, rest))
    if jax.tree.leaves(new_rest):
        for i, block in enumerate(blocks):
            state = nnx.state(block, nnx.Not(nnx.Param))
            nnx.replace_by_pure_dict(state, jax.tree.map(lambda a, i=i: a[i], new_rest))
            nnx.update(block, state)
    return x_BLD, [states_NBLD[i] for i in range(len(blocks))]
