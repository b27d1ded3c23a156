"""The shared Transformer: one block, used as a causal decoder (GPT) or a bidirectional encoder (BERT).

Nothing in this file knows which of the two it is. The caller builds the attention mask with
`models.masks.make_attention_mask` and passes it down; the same parameters serve either mask.

Layout (pre-LN, as in GPT-2): token embedding + additive positions -> N x [x + Attn(LN(x)),
x + MLP(LN(x))] -> final LN -> logits through the transposed token embedding (tied head).
Post-LN (the original Transformer and BERT) is `norm_position="post"`: N x [LN(x + Attn(x)),
LN(x + MLP(x))] with no final LN. The norm is LayerNorm, RMSNorm or BatchNorm; BatchNorm pools
statistics over batch and time while training, so in a causal model it lets information flow
from later tokens to earlier ones (measured, not hidden: see tests/test_block_options.py).
`encode` and `logits` are separate so an objective can gather the positions it scores before
paying for the vocabulary projection (the masked LM scores ~15% of positions).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from models.masks import make_cache_mask
from models.positions import EMBED_INIT_STD, POSITION_KINDS, AdditivePositions, apply_rotary

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
ATTENTION_IMPLS: tuple[str, ...] = ("xla", "cudnn")  # jax.nn.dot_product_attention(implementation=)


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


@struct.dataclass
class KVCache:
    """Keys and values of every layer for `S` token slots per row, filled left to right."""

    kv: list[dict[str, jnp.ndarray]]  # per layer {"k", "v"}: [B, S, N, H]
    valid_BS: jnp.ndarray  # bool: the slot holds a real (not padding) token
    index: jnp.ndarray  # int32 scalar: the next slot to write


def _norm(cfg: TransformerConfig, rngs: nnx.Rngs) -> nnx.Module:
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    if cfg.norm == "rmsnorm":
        return nnx.RMSNorm(cfg.d_model, **kw)
    if cfg.norm == "batchnorm":
        # Statistics over every axis but the feature axis: batch and time. Running averages
        # (momentum 0.9, PyTorch's default) replace them in eval mode (`model.eval()`).
        return nnx.BatchNorm(cfg.d_model, momentum=0.9, **kw)
    return nnx.LayerNorm(cfg.d_model, **kw)


def _linear(cfg: TransformerConfig, din: int, dout: int, std: float, rngs: nnx.Rngs, use_bias=True):
    return nnx.Linear(
        din,
        dout,
        use_bias=use_bias,
        kernel_init=nnx.initializers.normal(std),
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head self-attention through `jax.nn.dot_product_attention`."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.d_model
        # GPT-2's residual-branch scaling keeps the residual stream's variance flat with depth.
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        self.query = _linear(cfg, d, d, 0.02, rngs)
        # A key bias b adds q.b to every logit of a query's row, which the softmax ignores: it
        # would never get a gradient. Rotary positions rotate b per key position, turning it
        # into a learned relative-position bias, so only then does the key get one.
        self.key = _linear(cfg, d, d, 0.02, rngs, use_bias=cfg.position == "rotary")
        self.value = _linear(cfg, d, d, 0.02, rngs)
        self.out = _linear(cfg, d, d, out_std, rngs)

    def _qkv(self, x_BLD, positions_BL):
        B, L, _ = x_BLD.shape
        N, H = self.cfg.num_heads, self.cfg.head_dim
        q_BLNH = self.query(x_BLD).reshape(B, L, N, H)
        k_BLNH = self.key(x_BLD).reshape(B, L, N, H)
        v_BLNH = self.value(x_BLD).reshape(B, L, N, H)
        if self.cfg.position == "rotary":
            q_BLNH = apply_rotary(q_BLNH, positions_BL)
            k_BLNH = apply_rotary(k_BLNH, positions_BL)
        return q_BLNH, k_BLNH, v_BLNH

    def __call__(self, x_BLD, mask_B1LL, positions_BL):
        q_BLNH, k_BLNH, v_BLNH = self._qkv(x_BLD, positions_BL)
        return self._attend(q_BLNH, k_BLNH, v_BLNH, mask_B1LL)

    def extend(self, x_BTD, mask_B1TS, positions_BT, kv: dict, index):
        """Attention of T new tokens over a KV cache of S slots, after writing theirs at `index`.

        Same projections and attention as `__call__`; only where keys and values come from
        differs. Returns (output `[B, T, D]`, the updated `{"k", "v"}` `[B, S, N, H]`).
        """
        q_BTNH, k_BTNH, v_BTNH = self._qkv(x_BTD, positions_BT)
        k_BSNH = jax.lax.dynamic_update_slice_in_dim(kv["k"], k_BTNH.astype(kv["k"].dtype), index, axis=1)
        v_BSNH = jax.lax.dynamic_update_slice_in_dim(kv["v"], v_BTNH.astype(kv["v"].dtype), index, axis=1)
        return self._attend(q_BTNH, k_BSNH, v_BSNH, mask_B1TS), {"k": k_BSNH, "v": v_BSNH}

    def _attend(self, q_BTNH, k_BSNH, v_BSNH, mask_B1TS):
        B, T, N, H = q_BTNH.shape
        o_BTNH = jax.nn.dot_product_attention(
            q_BTNH,
            k_BSNH,
            v_BSNH,
            mask=mask_B1TS,
            scale=self.cfg.logit_scale,
            implementation=self.cfg.attention_impl,
        )
        return self.out(o_BTNH.reshape(B, T, N * H))

    def probabilities(self, x_BLD, mask_B1LL, positions_BL) -> jnp.ndarray:
        """Attention weights `[B, N, L, L]`, for inspection (the forward pass never builds them)."""
        q_BLNH, k_BLNH, _ = self._qkv(x_BLD, positions_BL)
        logits_BNLL = jnp.einsum("bqnh,bknh->bnqk", q_BLNH, k_BLNH).astype(jnp.float32)
        logits_BNLL = jnp.where(mask_B1LL, logits_BNLL * self.cfg.logit_scale, -1e30)
        return jax.nn.softmax(logits_BNLL, axis=-1)


class MLP(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.up = _linear(cfg, cfg.d_model, cfg.mlp_dim, 0.02, rngs)
        self.down = _linear(cfg, cfg.mlp_dim, cfg.d_model, 0.02 / math.sqrt(2 * cfg.num_layers), rngs)

    def __call__(self, x_BLD):
        return self.down(jax.nn.gelu(self.up(x_BLD)))


class Block(nnx.Module):
    """The shared block. It takes a mask; it never decides causality."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.pre = cfg.norm_position == "pre"
        self.attn_norm = _norm(cfg, rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = _norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_BLD, mask_B1LL, positions_BL):
        return self._residual(x_BLD, lambda h_BLD: self.attn(h_BLD, mask_B1LL, positions_BL))

    def extend(self, x_BTD, mask_B1TS, positions_BT, kv: dict, index):
        """The block on T new tokens against a KV cache (see `Attention.extend`)."""
        new_kv = {}

        def attend(h_BTD):
            out_BTD, new_kv["kv"] = self.attn.extend(h_BTD, mask_B1TS, positions_BT, kv, index)
            return out_BTD

        return self._residual(x_BTD, attend), new_kv["kv"]

    def _residual(self, x_BLD, attend):
        if self.pre:
            x_BLD = x_BLD + attend(self.attn_norm(x_BLD))
            return x_BLD + self.mlp(self.mlp_norm(x_BLD))
        x_BLD = self.attn_norm(x_BLD + attend(x_BLD))
        return self.mlp_norm(x_BLD + self.mlp(x_BLD))

    def attention_input(self, x_BLD):
        return self.attn_norm(x_BLD) if self.pre else x_BLD


class Transformer(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=nnx.initializers.normal(EMBED_INIT_STD),
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            rngs=rngs,
        )
        self.positions = AdditivePositions(
            cfg.position, cfg.max_len, cfg.d_model, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs
        )
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        # Post-LN blocks already end in a norm.
        self.final_norm = _norm(cfg, rngs) if cfg.norm_position == "pre" else None

    def hidden_states(self, tokens_BL, mask_B1LL, positions_BL) -> list[jnp.ndarray]:
        """The residual stream `[B, L, D]` after the embedding (index 0) and after each block.

        What a probe reads at "layer i"; `encode` is the final norm of the last entry.
        """
        x_BLD = self.positions(self.embed(tokens_BL), positions_BL)
        states = [x_BLD]
        for block in self.blocks:
            x_BLD = self._block(block, x_BLD, mask_B1LL, positions_BL)
            states.append(x_BLD)
        return states

    def _block(self, block: Block, x_BLD, mask_B1LL, positions_BL):
        if self.cfg.remat == "none":
            return block(x_BLD, mask_B1LL, positions_BL)
        # Activations inside the block are recomputed in the backward pass (per the policy):
        # memory for compute, the function and its gradients unchanged.
        run = nnx.remat(lambda b, x, m, p: b(x, m, p), policy=REMAT_POLICIES[self.cfg.remat])
        return run(block, x_BLD, mask_B1LL, positions_BL)

    def encode(self, tokens_BL, mask_B1LL, positions_BL) -> jnp.ndarray:
        """Final hidden states `[B, L, D]`."""
        x_BLD = self.hidden_states(tokens_BL, mask_B1LL, positions_BL)[-1]
        return self.final_norm(x_BLD) if self.final_norm is not None else x_BLD

    def attention_maps(self, tokens_BL, mask_B1LL, positions_BL) -> list[jnp.ndarray]:
        """Each layer's attention weights `[B, N, L, L]`."""
        x_BLD = self.positions(self.embed(tokens_BL), positions_BL)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.probabilities(block.attention_input(x_BLD), mask_B1LL, positions_BL))
            x_BLD = block(x_BLD, mask_B1LL, positions_BL)
        return maps

    def init_cache(self, batch_size: int, num_slots: int) -> KVCache:
        """An empty KV cache of `num_slots` token slots per row."""
        cfg = self.cfg
        shape = (batch_size, num_slots, cfg.num_heads, cfg.head_dim)
        zeros = lambda: jnp.zeros(shape, jnp.dtype(cfg.dtype))  # noqa: E731
        return KVCache(
            kv=[{"k": zeros(), "v": zeros()} for _ in range(cfg.num_layers)],
            valid_BS=jnp.zeros((batch_size, num_slots), bool),
            index=jnp.zeros((), jnp.int32),
        )

    def extend(
        self, tokens_BT, positions_BT, valid_BT, cache: KVCache, *, prefix_BT=None
    ) -> tuple[jnp.ndarray, KVCache]:
        """Runs T new tokens (a prompt prefill, or one decoding step) against the cache.

        Each new token attends causally to every valid slot before it, so a prefill followed by
        one-token steps computes exactly the logits of one causal forward pass over the whole
        sequence. `valid_BT` is False on left padding of shorter prompts; `prefix_BT` makes
        the new tokens a bidirectional prefix (a prefix LM's prompt). Returns (float32
        logits `[B, T, V]`, the cache with the new tokens written at `cache.index`).
        """
        T = tokens_BT.shape[1]
        valid_BS = jax.lax.dynamic_update_slice_in_dim(cache.valid_BS, valid_BT, cache.index, axis=1)
        mask_B1TS = make_cache_mask(valid_BS, cache.index, T, prefix_BT=prefix_BT)
        x_BTD = self.positions(self.embed(tokens_BT), positions_BT)
        new_kv = []
        for block, kv in zip(self.blocks, cache.kv, strict=True):
            x_BTD, kv = block.extend(x_BTD, mask_B1TS, positions_BT, kv, cache.index)
            new_kv.append(kv)
        h_BTD = self.final_norm(x_BTD) if self.final_norm is not None else x_BTD
        return self.logits(h_BTD), KVCache(kv=new_kv, valid_BS=valid_BS, index=cache.index + T)

    def logits(self, h_xD) -> jnp.ndarray:
        """Vocabulary logits (float32) for hidden states of any leading shape, via the tied embedding."""
        return self.embed.attend(h_xD).astype(jnp.float32)

    def __call__(self, tokens_BL, mask_B1LL, positions_BL) -> jnp.ndarray:
        return self.logits(self.encode(tokens_BL, mask_B1LL, positions_BL))


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
