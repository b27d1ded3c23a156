"""Scan over layers (`model.scan_layers=True`): the blocks stored stacked and run as one
`jax.lax.scan` body.

XLA then compiles one block, not `num_layers` copies, and the optimizer sees one array per
parameter kind, not one per layer: both are why compile time stays flat with depth (with a
per-layer tree the optimizer update alone compiles 6x slower at 24 layers than at 2). The
parameters carry a leading layer axis (`blocks/layers/attn/query/kernel: [N, D, D]`), so a
scanned run's checkpoints are not interchangeable with a looped run's: `scan_layers` is part of
a run's identity. Non-parameter state (BatchNorm statistics) comes out of the scan stacked.

`StackedBlocks` still reads as a sequence of blocks: `blocks[i]` and iteration give layer i as
a `Block` (a view merged from slice i), which is what the KV cache, attention maps and probes
use; only the training forward pass goes through the scan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx


class StackedBlocks(nnx.Module):
    """The blocks stored stacked (one leading layer axis) and run by one `lax.scan`, so compile
    time stays flat in depth."""

    def __init__(self, make_block: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs: nnx.Rngs) -> nnx.Module:
            return make_block(rngs)

        self.layers = create(rngs)
        self.num_layers = num_layers

    def __call__(self, x_BLD, args: tuple, policy=None, remat: bool = False):
        """(output, the residual stream after each block) of `x = block_i(x, *args)` for every i;
        `remat` recomputes each block in the backward pass under the checkpoint `policy`."""
        graphdef, params, rest = nnx.split(self.layers, nnx.Param, ...)

        def body(x_BLD, layer):
            block = nnx.merge(graphdef, *layer)
            x_BLD = block(x_BLD, *args)
            return x_BLD, (x_BLD, nnx.to_pure_dict(nnx.state(block, nnx.Not(nnx.Param))))

        if remat:
            body = jax.checkpoint(body, policy=policy)
        layers = (nnx.to_pure_dict(params), nnx.to_pure_dict(rest))
        x_BLD, (states_NBLD, new_rest) = jax.lax.scan(body, x_BLD, layers)
        if jax.tree.leaves(new_rest):
            nnx.replace_by_pure_dict(rest, new_rest)
            nnx.update(self.layers, rest)
        return x_BLD, [states_NBLD[i] for i in range(self.num_layers)]

    def __getitem__(self, i: int) -> nnx.Module:
        graphdef, state = nnx.split(self.layers)
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))

    def __iter__(self) -> Iterator[nnx.Module]:
        return (self[i] for i in range(self.num_layers))

    def __len__(self) -> int:
        return self.num_layers


def stack_layer_params(tree):
    """A looped model's parameter (or state) tree in the scanned layout: every `blocks` entry
    of per-layer subtrees `{0: ..., 1: ...}` becomes `{"layers": <stacked along axis 0>}`.

    Converts a looped run's parameters (e.g. a checkpoint's) for a `scan_layers=True` model.
    """
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key == "blocks" and isinstance(value, dict) and value and all(isinstance(i, int) for i in value):
            out[key] = {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *[value[i] for i in sorted(value)])}
        else:
            out[key] = stack_layer_params(value)
    return out
