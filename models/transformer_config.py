"""The shared Transformer's configuration: shapes and block options, validated on construction.

Identical for GPT and BERT runs of one variant; `models/transformer.py` builds the model from it.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from models.positions import POSITION_KINDS

NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm", "batchnorm")
NORM_POSITIONS: tuple[str, ...] = ("pre", "post")
# Multiplier of q.k: 1/sqrt(d_k) (Vaswani et al.), 1 (none), or 1/d_k.
ATTN_SCALES: tuple[str, ...] = ("sqrt", "one", "inv")
# Rematerialisation of each block in the backward pass: what the forward pass keeps.
REMAT_POLICIES = {
    "none": None,  # keep every activation (no remat)
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}
# "xla" and "cudnn" through jax.nn.dot_product_attention(implementation=); "einsum" written out.
ATTENTION_IMPLS: tuple[str, ...] = ("xla", "cudnn", "einsum")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Shapes and options of the shared model; identical for GPT and BERT runs."""

    vocab_size: int
    d_model: int
    num_heads: int
    num_layers: int
    mlp_dim: int
    max_len: int
    position: str = "rotary"
    norm: str = "layernorm"
    norm_position: str = "pre"
    attn_scale: str = "sqrt"
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"
    arch: str = "transformer"
    # Blocks stored stacked and run as one lax.scan (models/layer_scan.py): the same function,
    # another parameter layout, so part of a run's identity.
    scan_layers: bool = False
    # How, not what: neither changes the parameters or the function computed.
    remat: str = "none"
    attention_impl: str = "xla"

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.num_heads="
                f"{self.num_heads}; pick heads that divide the width"
            )
        if self.position not in POSITION_KINDS:
            raise ValueError(f"model.position={self.position!r} is not one of {POSITION_KINDS}")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"model.norm={self.norm!r} is not one of {NORM_KINDS}")
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"model.norm_position={self.norm_position!r} is not one of {NORM_POSITIONS}")
        if self.attn_scale not in ATTN_SCALES:
            raise ValueError(f"model.attn_scale={self.attn_scale!r} is not one of {ATTN_SCALES}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r} is not one of {tuple(REMAT_POLICIES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"model.attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        if self.position == "rotary" and (self.d_model // self.num_heads) % 2:
            raise ValueError("rotary positions need an even head dim (model.d_model / num_heads)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def logit_scale(self) -> float:
        # 1.0 / sqrt(d_k) exactly as jax.nn.dot_product_attention computes its default.
        return {"sqrt": 1.0 / math.sqrt(self.head_dim), "one": 1.0, "inv": 1.0 / self.head_dim}[
            self.attn_scale
        ]
