"""Hugging Face weights in tests (tests/test_hf_weights.py, test_hf_import.py, test_hf_tokenizer.py):
a randomly redrawn `Transformer`, its parameters as a plain dict and back, and a directory in the
Hub's layout."""

from __future__ import annotations

import os


def random_transformer(cfg, seed: int = 0):
    """A `Transformer` of `cfg` with every parameter redrawn: biases non-zero, norm scales away from 1."""
    import jax
    from flax import nnx

    from models.transformer import Transformer

    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    new = [1.0 + 0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, [0.3 * (x - 1.0) + (x.ndim == 1) * 0.5 for x in new]))
    return model


def param_dict(model) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())


def transformer_with(params: dict, cfg):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from models.transformer import Transformer

    model = Transformer(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return model


def write_hub_dir(path, tensors: dict, config: dict) -> str:
    """A directory in the Hub's layout: config.json and a PyTorch-format model.safetensors."""
    import json

    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return str(path)
