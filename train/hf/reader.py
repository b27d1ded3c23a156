"""Starting from a public checkpoint: `--config.init_from=hf:DIR`, and `load_hf(DIR)`.

DIR is a local Hugging Face model directory in the layout the Hub serves for `GPT2LMHeadModel` /
`BertForMaskedLM`: `config.json` and `model.safetensors`. Only safetensors are read; a directory
holding only a pickled `pytorch_model.bin` is refused with the command that converts it (a pickle
can run code when loaded). The HF config is checked against the run's model config field by
field before anything compiles, and every tensor is accounted for (train/hf/weights.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from models.errors import ConfigError
from models.transformer_config import TransformerConfig
from train.hf.config import model_fields
from train.hf.weights import flax_layout_message, from_hf

PREFIX = "hf:"
_NAMES = {  # model.* field -> what config.json calls it, per family (for the messages)
    "gpt2": dict(
        d_model="n_embd", num_heads="n_head", num_layers="n_layer", mlp_dim="n_inner", max_len="n_positions"
    ),
    "bert": dict(
        d_model="hidden_size",
        num_heads="num_attention_heads",
        num_layers="num_hidden_layers",
        mlp_dim="intermediate_size",
        max_len="max_position_embeddings",
    ),
}


def directory(init_from: str) -> str:
    if not init_from.startswith(PREFIX):
        raise ConfigError(f"init_from={init_from!r}: use 'hf:DIR' (a local Hugging Face model directory)")
    return os.path.expanduser(init_from[len(PREFIX) :])


def read_config(path: str) -> tuple[str, dict[str, Any]]:
    """(family, model.* fields) of the HF directory `path`, after checking its files."""
    files = set(os.listdir(path)) if os.path.isdir(path) else set()
    if "config.json" not in files:
        raise ConfigError(f"init_from: {path} has no config.json; give a Hugging Face model directory")
    if "model.safetensors" not in files:
        if "pytorch_model.bin" in files:
            raise ConfigError(
                f"init_from: {path} holds only pytorch_model.bin, a pickle, which is never loaded here "
                "(unpickling can run code). Convert it once where PyTorch is installed: python -c "
                f"\"from transformers import AutoModel; AutoModel.from_pretrained('{path}')"
                f".save_pretrained('{path}', safe_serialization=True)\""
            )
        if "flax_model.msgpack" in files:
            with open(os.path.join(path, "config.json")) as f:
                fam = "gpt2" if json.load(f).get("model_type") == "gpt2" else "bert"
            raise ConfigError(f"init_from: {path} holds flax_model.msgpack: " + flax_layout_message(fam))
        raise ConfigError(f"init_from: {path} has no model.safetensors")
    with open(os.path.join(path, "config.json")) as f:
        try:
            return model_fields(json.load(f))
        except ValueError as e:
            raise ConfigError(f"init_from: {path}/config.json: {e}") from e


def config_differences(path: str, cfg: TransformerConfig) -> list[str]:
    """Every field in which the run's model config differs from the directory's, named both ways."""
    fam, fields = read_config(path)
    names = _NAMES[fam]
    out = []
    for key, theirs in fields.items():
        ours = getattr(cfg, key)
        if ours != theirs:
            where = names.get(key, "vocab_size" if key == "vocab_size" else "")
            hint = (
                " (a run's vocabulary comes from its tokenizer: the directory's tokenizer.json unless"
                " tokenizer.path names another)"
                if key == "vocab_size"
                else ""
            )
            out.append(
                f"model.{key}={ours!r} but {path} has {theirs!r}" + (f" ({where})" if where else "") + hint
            )
    return out


def read_params(path: str, cfg: TransformerConfig) -> dict:
    """The directory's weights as our parameters (pure dict of numpy arrays)."""
    from safetensors.numpy import load_file

    fam, _ = read_config(path)
    try:
        return from_hf(load_file(os.path.join(path, "model.safetensors")), cfg, fam)
    except ValueError as e:
        raise ConfigError(f"init_from: {path}: {e}") from e


def with_params(state: Any, params: dict, tx: Any, shardings: Any) -> Any:
    """`state` with `params` (placed on the state's shardings) and a fresh optimizer state for them."""
    placed = jax.tree.map(
        lambda ref, new, s: jax.device_put(np.asarray(new, ref.dtype), s),
        state.params,
        params,
        shardings.params,
    )
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(placed)
    return state.replace(params=placed, opt_state=opt_state)


def load_model(path: str) -> tuple[nnx.Module, dict[str, Any]]:
    """(the model of an HF directory, in eval mode, on the default device; its run identity)."""
    from models.transformer import Transformer

    fam, fields = read_config(path)
    cfg = TransformerConfig(**fields)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    state.replace_by_pure_dict(jax.tree.map(jax.numpy.asarray, read_params(path, cfg)))
    nnx.update(model, state)
    model.eval()
    identity = {
        "model": dataclasses.asdict(cfg),
        "objective": "clm" if fam == "gpt2" else "mlm",
        "mask": "causal" if fam == "gpt2" else "bidirectional",
        "dataset": f"{PREFIX}{path}",
    }
    return model, identity
