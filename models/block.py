"""The shared block: attention (self or cross), MLP and their norms, pre-LN or post-LN.

`Block` is all the model there is: `models/transformer.py` stacks it into GPT, BERT, or one side
of an encoder-decoder, and the attention mask it is given decides what it may see. `extend`
runs new tokens against a KV cache through the same code as the parallel forward pass.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models import fused_attention
from models.masks import dense_mask
from models.positions import apply_rotary
from models.transformer_config import TransformerConfig, attention_impl_for


def norm_layer(cfg: TransformerConfig, rngs: nnx.Rngs) -> nnx.Module:
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    if cfg.norm == "rmsnorm":
        return nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, **kw)
    if cfg.norm == "batchnorm":
        # Statistics over every axis but the feature axis: batch and time. Running averages
        # (momentum 0.9, PyTorch's default) replace them in eval mode (`model.eval()`).
        return nnx.BatchNorm(cfg.d_model, momentum=0.9, **kw)
    return nnx.LayerNorm(cfg.d_model, epsilon=cfg.norm_eps, **kw)


def activation(cfg: TransformerConfig, x):
    return jax.nn.gelu(x, approximate=cfg.activation == "gelu_tanh")


def _per_token(layer: nnx.Module, x_xD: jnp.ndarray) -> jnp.ndarray:
    """`layer` on the last axis as one 2-D `[tokens, features]` matmul: the same function as
    `layer(x_xD)`, and on XLA:CPU a faster step than the `[B, L, D]` dot_general (measured on
    the GPT benchmark step, d_model 256, seq 256, batch 16: 570 -> 510 ms)."""
    return layer(x_xD.reshape(-1, x_xD.shape[-1])).reshape(*x_xD.shape[:-1], -1)


def _written_out(q_BNTH, k_BNSH, v_BNSH, mask_B1TS):
    """Attention written out, as Flax Linen's: two einsums and a float32 softmax over the allowed
    keys (queries already scaled)."""
    logits_BNTS = jnp.einsum("bnth,bnsh->bnts", q_BNTH, k_BNSH)
    # The mask as an additive bias rather than a select: the same logits (a forbidden one becomes
    # exactly float32's minimum, an allowed one is unchanged), so the same output; and in a row
    # that allows any key (models/masks.py gives every row one) a forbidden key's probability,
    # hence its gradient, is exactly zero either way. But the backward pass needs no select over
    # [B, N, T, S], a pass of its own on XLA:CPU (one layer's attention, forward and backward,
    # 51 -> 46 ms).
    bias_B1TS = jnp.where(mask_B1TS, 0.0, jnp.finfo(jnp.float32).min)
    logits_BNTS = logits_BNTS.astype(jnp.float32) + bias_B1TS
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1).astype(v_BNSH.dtype)
    return jnp.einsum("bnts,bnsh->bnth", probs_BNTS, v_BNSH)


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
    """Multi-head attention, written out or through `jax.nn.dot_product_attention` (`attend`).

    Self-attention, or cross-attention (`cross=True`) when the keys and values come from a
    `context`, an encoder's output: queries from the decoder, keys and values from the encoder.
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, cross: bool = False):
        self.cfg = cfg
        # Rotary angles encode the offset between a query and a key of one sequence; a decoder
        # query and an encoder key have no such offset, so cross-attention has none (as in T5).
        self.rotary = cfg.position == "rotary" and not cross
        d = cfg.d_model
        # GPT-2's residual-branch scaling keeps the residual stream's variance flat with depth.
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        self.query = _linear(cfg, d, d, 0.02, rngs)
        # A key bias b adds q.b to every logit of a query's row, which the softmax ignores: it
        # would never get a gradient. Rotary positions rotate b per key position, turning it
        # into a learned relative-position bias, so only then does the key get one.
        self.key = _linear(cfg, d, d, 0.02, rngs, use_bias=self.rotary)
        self.value = _linear(cfg, d, d, 0.02, rngs)
        self.out = _linear(cfg, d, d, out_std, rngs)

    def _heads(self, y_BLD):
        B, L, _ = y_BLD.shape
        return y_BLD.reshape(B, L, self.cfg.num_heads, self.cfg.head_dim)

    def queries(self, x_BLD, positions_BL):
        q_BLNH = self._heads(_per_token(self.query, x_BLD))
        return apply_rotary(q_BLNH, positions_BL) if self.rotary else q_BLNH

    def keys_values(self, x_BSD, positions_BS=None) -> dict[str, jnp.ndarray]:
        """`{"k", "v"}` `[B, S, N, H]`: what a KV cache holds (for cross-attention, once per source)."""
        k_BSNH = self._heads(_per_token(self.key, x_BSD))
        if self.rotary:
            k_BSNH = apply_rotary(k_BSNH, positions_BS)
        return {"k": k_BSNH, "v": self._heads(_per_token(self.value, x_BSD))}

    def __call__(self, x_BLD, mask_B1LS, positions_BL, context_BSD=None, key_limits=None):
        kv = self.keys_values(x_BLD if context_BSD is None else context_BSD, positions_BL)
        return self.attend(self.queries(x_BLD, positions_BL), kv, mask_B1LS, key_limits)

    def extend(self, x_BTD, mask_B1TS, positions_BT, kv: dict, index):
        """Attention of T new tokens over a KV cache of S slots, after writing theirs at `index`.

        Same projections and attention as `__call__`; only where keys and values come from
        differs. Returns (output `[B, T, D]`, the updated `{"k", "v"}` `[B, S, N, H]`).
        """
        new = self.keys_values(x_BTD, positions_BT)
        kv = {
            name: jax.lax.dynamic_update_slice_in_dim(
                kv[name], new[name].astype(kv[name].dtype), index, axis=1
            )
            for name in ("k", "v")
        }
        return self.attend(self.queries(x_BTD, positions_BT), kv, mask_B1TS), kv

    def attend(self, q_BTNH, kv: dict, mask, key_limits: tuple[int, ...] | None = None):
        """Attention of the queries over `kv` (keys and values, projected and positioned) under
        `mask` (a `models.masks.SegmentMask`, or its `[B, 1, T, S]` booleans): a fused kernel for
        "splash" and "pallas_gpu" (models/fused_attention.py), written out for "einsum" (with the
        mask's static `key_limits`, `models.masks.key_limits`, to skip the keys a chunk of
        queries may never see), else `jax.nn.dot_product_attention`."""
        B, T, N, H = q_BTNH.shape
        # A run resolves "auto" for its mesh's platform (train/loop/build.py); a model built
        # elsewhere (a notebook, a tool) runs on the default backend.
        impl = attention_impl_for(self.cfg.attention_impl, jax.default_backend())
        if impl in fused_attention.FUSED_IMPLS:
            why = fused_attention.unsupported(impl, T, kv["k"].shape[1], mask)
            if why is None:
                q_BTNH = q_BTNH * self.cfg.logit_scale
                o_BTNH = fused_attention.attention(impl, q_BTNH, kv["k"], kv["v"], mask)
                return _per_token(self.out, o_BTNH.reshape(B, T, N * H))
            fused_attention.warn_once(
                f"model.attention_impl={impl!r} cannot serve {why}: that attention is written out (xla)"
            )
            impl = "xla"
        mask_B1TS = dense_mask(mask)
        if impl == "einsum":
            o_BTNH = self._einsum(q_BTNH, kv, mask_B1TS, key_limits)
        else:
            o_BTNH = jax.nn.dot_product_attention(
                q_BTNH,
                kv["k"],
                kv["v"],
                mask=mask_B1TS,
                scale=self.cfg.logit_scale,
                implementation=impl,
            )
        return _per_token(self.out, o_BTNH.reshape(B, T, N * H))

    def _einsum(self, q_BTNH, kv: dict, mask_B1TS, key_limits: tuple[int, ...] | None):
        # With the heads moved next to the batch first, every einsum is a batched matmul over
        # leading axes, which XLA:CPU runs ~15% faster (forward and backward) than the same
        # products with the heads between tokens and features.
        q_BNTH, k_BNSH, v_BNSH = (
            x.transpose(0, 2, 1, 3) for x in (q_BTNH * self.cfg.logit_scale, kv["k"], kv["v"])
        )
        if key_limits is None:
            return _written_out(q_BNTH, k_BNSH, v_BNSH, mask_B1TS).transpose(0, 2, 1, 3)
        chunk = q_BTNH.shape[1] // len(key_limits)
        o_BNTH = jnp.concatenate(
            [
                _written_out(
                    q_BNTH[:, :, i * chunk : (i + 1) * chunk],
                    k_BNSH[:, :, :limit],
                    v_BNSH[:, :, :limit],
                    mask_B1TS[:, :, i * chunk : (i + 1) * chunk, :limit],
                )
                for i, limit in enumerate(key_limits)
            ],
            axis=2,
        )
        return o_BNTH.transpose(0, 2, 1, 3)

    def probabilities(self, x_BLD, mask_B1LS, positions_BL, context_BSD=None) -> jnp.ndarray:
        """Attention weights `[B, N, L, S]`, for inspection (the forward pass never builds them)."""
        q_BLNH = self.queries(x_BLD, positions_BL)
        k_BSNH = self.keys_values(x_BLD if context_BSD is None else context_BSD, positions_BL)["k"]
        logits_BNLS = jnp.einsum("bqnh,bknh->bnqk", q_BLNH, k_BSNH).astype(jnp.float32)
        logits_BNLS = jnp.where(dense_mask(mask_B1LS), logits_BNLS * self.cfg.logit_scale, -1e30)
        return jax.nn.softmax(logits_BNLS, axis=-1)


class MLP(nnx.Module):
    """The block's feed-forward layer: up-projection, activation, down-projection."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.up = _linear(cfg, cfg.d_model, cfg.mlp_dim, 0.02, rngs)
        self.down = _linear(cfg, cfg.mlp_dim, cfg.d_model, 0.02 / math.sqrt(2 * cfg.num_layers), rngs)

    def __call__(self, x_BLD):
        return _per_token(self.down, activation(self.cfg, _per_token(self.up, x_BLD)))


class BertHead(nnx.Module):
    """BERT's output transform: dense, activation, norm; the tied projection then adds `bias`."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dense = _linear(cfg, cfg.d_model, cfg.d_model, 0.02, rngs)
        self.norm = norm_layer(cfg, rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.dtype(cfg.param_dtype)))

    def __call__(self, h_xD):
        return self.norm(activation(self.cfg, _per_token(self.dense, h_xD)))


class Block(nnx.Module):
    """The shared block. It takes masks; it never decides causality.

    With `cross_attention` (an encoder-decoder's decoder) a cross-attention sublayer over the
    encoder's output sits between self-attention and the MLP, as in Vaswani et al. 2017.
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, cross_attention: bool = False):
        self.pre = cfg.norm_position == "pre"
        self.attn_norm = norm_layer(cfg, rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = norm_layer(cfg, rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.cross_norm = norm_layer(cfg, rngs) if cross_attention else None
        self.cross = Attention(cfg, rngs=rngs, cross=True) if cross_attention else None

    def __call__(
        self, x_BLD, mask_B1LL, positions_BL, context_BSD=None, cross_mask_B1LS=None, key_limits=None
    ):
        """`key_limits`: static bounds of the self-attention mask (`models.masks.key_limits`)."""
        x_BLD = self._sublayer(
            x_BLD, self.attn_norm, lambda h: self.attn(h, mask_B1LL, positions_BL, key_limits=key_limits)
        )
        if self.cross is not None:
            if context_BSD is None:
                raise ValueError("a block with cross-attention needs the encoder output (context_BSD)")
            x_BLD = self._sublayer(
                x_BLD, self.cross_norm, lambda h: self.cross(h, cross_mask_B1LS, None, context_BSD)
            )
        return self._sublayer(x_BLD, self.mlp_norm, self.mlp)

    def extend(self, x_BTD, mask_B1TS, positions_BT, kv: dict, index, cross_kv=None, cross_mask_B1TS=None):
        """The block on T new tokens against a KV cache (see `Attention.extend`); a decoder block
        reads the encoder's keys and values from `cross_kv`, computed once per source."""
        new_kv = {}

        def attend(h_BTD):
            out_BTD, new_kv["kv"] = self.attn.extend(h_BTD, mask_B1TS, positions_BT, kv, index)
            return out_BTD

        x_BTD = self._sublayer(x_BTD, self.attn_norm, attend)
        if self.cross is not None:
            x_BTD = self._sublayer(
                x_BTD,
                self.cross_norm,
                lambda h: self.cross.attend(self.cross.queries(h, None), cross_kv, cross_mask_B1TS),
            )
        return self._sublayer(x_BTD, self.mlp_norm, self.mlp), new_kv["kv"]

    def _sublayer(self, x_BLD, norm, f):
        return x_BLD + f(norm(x_BLD)) if self.pre else norm(x_BLD + f(x_BLD))

    def attention_maps(self, x_BLD, mask_B1LL, positions_BL, context_BSD=None, cross_mask_B1LS=None):
        """(self-attention weights, cross-attention weights or None) of this block on its input."""
        read = (lambda norm, h: norm(h)) if self.pre else (lambda norm, h: h)
        self_map = self.attn.probabilities(read(self.attn_norm, x_BLD), mask_B1LL, positions_BL)
        if self.cross is None:
            return self_map, None
        x_BLD = self._sublayer(x_BLD, self.attn_norm, lambda h: self.attn(h, mask_B1LL, positions_BL))
        cross_map = self.cross.probabilities(read(self.cross_norm, x_BLD), cross_mask_B1LS, None, context_BSD)
        return self_map, cross_map
