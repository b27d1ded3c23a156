"""The shared Transformer's configuration: shapes and block options, validated on construction.

Identical for GPT and BERT runs of one variant; `models/transformer.py` builds the model from it.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from models.errors import check, nonpositive
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
# "xla" and "cudnn" through jax.nn.dot_product_attention(implementation=); "einsum" written out;
# "splash" (TPU) and "pallas_gpu" fused kernels (models/fused_attention.py; interpreted on a CPU);
# "auto" the platform's choice (`attention_impl_for`).
ATTENTION_IMPLS: tuple[str, ...] = ("auto", "xla", "cudnn", "einsum", "splash", "pallas_gpu")
AUTO_ATTENTION = {"cpu": "einsum", "tpu": "splash", "gpu": "pallas_gpu"}
# Where an implementation runs (the kernels also on a CPU, interpreted); the rest run anywhere.
ATTENTION_PLATFORMS = {"cudnn": ("gpu",), "splash": ("tpu", "cpu"), "pallas_gpu": ("gpu", "cpu")}


def attention_impl_for(impl: str, platform: str) -> str:
    """What `impl` runs as on `platform` ("cpu", "gpu", "tpu"): "auto" is the written-out
    attention on CPU, whose batched matmuls XLA:CPU runs faster than the library call's
    (docs/performance.md: the GPT benchmark step's matmuls alone 1,391 -> 1,268 ms, level with
    Hugging Face's), the splash kernel on TPU and the Pallas flash kernel on GPU, neither of
    which writes out the `[B, N, T, S]` logits (cuDNN's, through the library call, takes no
    segment ids: packed rows would need their mask written out); any other value is itself."""
    if impl != "auto":
        return impl
    return AUTO_ATTENTION.get(platform, "xla")


# The loss over the vocabulary: "full" logits of every scored token at once, or "chunked"
# (train/objectives/vocab_loss.py: `loss_chunk_tokens` tokens a device at a time, never the whole
# batch's float32 logits); "auto" the platform's choice (`loss_impl_for`).
LOSS_IMPLS: tuple[str, ...] = ("auto", "full", "chunked")
AUTO_LOSS = {"cpu": "full", "tpu": "chunked", "gpu": "chunked"}


def loss_impl_for(impl: str, platform: str) -> str:
    """What `impl` runs as on `platform`: "auto" is the chunked loss on accelerators, whose
    memory it frees (GPT-2's float32 logits and their gradient: 0.2 GB a row of 1024 tokens),
    and the full logits on CPU, where ... ; any other value is itself."""
    if impl != "auto":
        return impl
    return AUTO_LOSS.get(platform, "chunked")


# GELU as GPT-2 computes it (tanh approximation) or exactly (erf), as BERT does.
ACTIVATIONS: tuple[str, ...] = ("gelu_tanh", "gelu")
# The output head: logits through the tied embedding, or BERT's (dense, activation and norm
# before the tied projection, plus an output bias).
HEADS: tuple[str, ...] = ("tied", "bert")
# Fields added after checkpoints were written: at these defaults they stay out of the run
# identity, so a checkpoint from before them still resumes (and loads with the defaults).
LATER_FIELDS: dict[str, object] = {
    "norm_eps": 1e-6,
    "activation": "gelu_tanh",
    "embed_norm": False,
    "head": "tied",
}


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
    norm_eps: float = 1e-6  # LayerNorm / RMSNorm epsilon (GPT-2: 1e-5, BERT: 1e-12)
    activation: str = "gelu_tanh"
    embed_norm: bool = False  # a norm after the embeddings and positions (BERT)
    head: str = "tied"
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"
    arch: str = "transformer"
    # Blocks stored stacked and run as one lax.scan (models/layer_scan.py): the same function,
    # another parameter layout, so part of a run's identity.
    scan_layers: bool = False
    # How, not what: neither changes the parameters or the function computed.
    remat: str = "none"
    attention_impl: str = "auto"
    loss_impl: str = "auto"
    loss_chunk_tokens: int = 1024

    def __post_init__(self):
        check(self.errors())

    def errors(self) -> list[str]:
        """Every problem of these fields, each naming its `model.*` field and the fix."""
        errors = nonpositive(
            self, ("num_layers", "d_model", "num_heads", "mlp_dim", "max_len", "loss_chunk_tokens")
        )
        if self.num_heads > 0 and self.d_model % self.num_heads:
            errors.append(
                f"model.num_heads={self.num_heads} does not divide model.d_model={self.d_model}; "
                "pick a head count that divides the width"
            )
        if self.position == "rotary" and self.num_heads > 0 and (self.d_model // self.num_heads) % 2:
            errors.append("model.position='rotary' needs an even head dim (model.d_model / model.num_heads)")
        for field, kinds in (
            ("position", POSITION_KINDS),
            ("norm", NORM_KINDS),
            ("norm_position", NORM_POSITIONS),
            ("attn_scale", ATTN_SCALES),
            ("remat", tuple(REMAT_POLICIES)),
            ("attention_impl", ATTENTION_IMPLS),
            ("loss_impl", LOSS_IMPLS),
            ("activation", ACTIVATIONS),
            ("head", HEADS),
        ):
            if getattr(self, field) not in kinds:
                errors.append(f"model.{field}={getattr(self, field)!r}: use one of {kinds}")
        if not self.norm_eps > 0:
            errors.append(f"model.norm_eps={self.norm_eps} must be positive (GPT-2 uses 1e-5, BERT 1e-12)")
        if self.attention_impl == "cudnn" and self.dtype not in ("bfloat16", "float16"):
            errors.append(
                f"model.attention_impl='cudnn' runs in bfloat16 or float16 only, not model.dtype="
                f"{self.dtype!r}; set model.dtype=bfloat16 or use attention_impl='xla'"
            )
        return errors

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def logit_scale(self) -> float:
        # 1.0 / sqrt(d_k) exactly as jax.nn.dot_product_attention computes its default.
        return {"sqrt": 1.0 / math.sqrt(self.head_dim), "one": 1.0, "inv": 1.0 / self.head_dim}[
            self.attn_scale
        ]
