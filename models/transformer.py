"""The shared Transformer: one block, used as a causal decoder (GPT) or a bidirectional encoder (BERT).

Nothing in this file knows which of the two it is. The caller builds the attention mask with
`models.masks.make_attention_mask` and passes it down; the same parameters serve either mask.

Layout (pre-LN, as in GPT-2): token embedding + additive positions -> N x [x + Attn(LN(x)),
x + MLP(LN(x))] -> final LN -> logits through the transposed token embedding (tied head).
Post-LN (the original Transformer and BERT) is `norm_position="post"`: N x [LN(x + Attn(x)),
LN(x + MLP(x))] with no final LN. The norm is LayerNorm, RMSNorm or BatchNorm; BatchNorm pools
statistics over batch and time while training, so in a causal model it lets information flow
from later tokens to earlier ones (measured, not hidden: see tests/test_block_options.py).
`hidden_states` (the final ones) and `logits` are separate so an objective can gather the
positions it scores before paying for the vocabulary projection (the masked LM scores ~15% of positions).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from models.block import Attention, BertHead, Block, norm_layer  # noqa: F401  (Attention re-exported)
from models.layer_scan import StackedBlocks
from models.masks import make_cache_mask
from models.positions import EMBED_INIT_STD, AdditivePositions
from models.transformer_config import (  # noqa: F401  (re-exported: the model's public names)
    ATTENTION_IMPLS,
    ATTN_SCALES,
    NORM_KINDS,
    NORM_POSITIONS,
    REMAT_POLICIES,
    TransformerConfig,
)


@struct.dataclass
class KVCache:
    """Keys and values of every layer for `S` token slots per row, filled left to right."""

    kv: list[dict[str, jnp.ndarray]]  # per layer {"k", "v"}: [B, S, N, H]
    valid_BS: jnp.ndarray  # bool: the slot holds a real (not padding) token
    index: jnp.ndarray  # int32 scalar: the next slot to write
    # A decoder's cache also holds the encoder output's keys and values, per layer, and which
    # source positions are real.
    cross: list[dict[str, jnp.ndarray]] | None = None
    cross_valid_BS: jnp.ndarray | None = None


class Transformer(nnx.Module):
    """A stack of shared blocks: GPT, BERT, or one side of an encoder-decoder.

    With `cross_attention=True` it is an encoder-decoder's decoder: every block also attends
    to `context_BSD` (the encoder's output) under `cross_mask_B1LS` (see models/encoder_decoder.py).
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, cross_attention: bool = False):
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
        if cfg.scan_layers:
            self.blocks = StackedBlocks(
                lambda r: Block(cfg, rngs=r, cross_attention=cross_attention), cfg.num_layers, rngs=rngs
            )
        else:
            self.blocks = nnx.List(
                [Block(cfg, rngs=rngs, cross_attention=cross_attention) for _ in range(cfg.num_layers)]
            )
        # Post-LN blocks already end in a norm.
        self.final_norm = norm_layer(cfg, rngs) if cfg.norm_position == "pre" else None
        self.embed_norm = norm_layer(cfg, rngs) if cfg.embed_norm else None
        self.head = BertHead(cfg, rngs=rngs) if cfg.head == "bert" else None

    def _inputs(self, tokens_BL, positions_BL):
        """Token embeddings plus positions (then a norm, as in BERT, if `embed_norm`)."""
        x_BLD = self.positions(self.embed(tokens_BL), positions_BL)
        return self.embed_norm(x_BLD) if self.embed_norm is not None else x_BLD

    def residual_stream(
        self, tokens_BL, mask_B1LL, positions_BL, *, context_BSD=None, cross_mask_B1LS=None, key_limits=None
    ) -> list[jnp.ndarray]:
        """The residual stream `[B, L, D]` after the embedding (index 0) and after each block.

        What a probe reads at "layer i"; `hidden_states` is the final norm of the last entry.
        """
        x_BLD = self._inputs(tokens_BL, positions_BL)
        states = [x_BLD]
        args = (mask_B1LL, positions_BL, context_BSD, cross_mask_B1LS)
        if self.cfg.scan_layers:
            policy, remat = REMAT_POLICIES[self.cfg.remat], self.cfg.remat != "none"
            return states + self.blocks(x_BLD, (*args, key_limits), policy, remat)[1]
        for block in self.blocks:
            x_BLD = self._block(block, x_BLD, args, key_limits)
            states.append(x_BLD)
        return states

    def _block(self, block: Block, x_BLD, args: tuple, key_limits):
        """`block(x_BLD, *args)`; `key_limits` is static, so remat closes over it."""
        if self.cfg.remat == "none":
            return block(x_BLD, *args, key_limits)
        # Activations inside the block are recomputed in the backward pass (per the policy):
        # memory for compute, the function and its gradients unchanged.
        run = nnx.remat(lambda b, *a: b(*a, key_limits), policy=REMAT_POLICIES[self.cfg.remat])
        return run(block, x_BLD, *args)

    def hidden_states(
        self, tokens_BL, mask_B1LL, positions_BL, *, context_BSD=None, cross_mask_B1LS=None, key_limits=None
    ):
        """Final hidden states `[B, L, D]`. `key_limits`: the mask's static bounds
        (`models.masks.key_limits`), which written-out attention uses to skip forbidden keys."""
        x_BLD = self.residual_stream(
            tokens_BL,
            mask_B1LL,
            positions_BL,
            context_BSD=context_BSD,
            cross_mask_B1LS=cross_mask_B1LS,
            key_limits=key_limits,
        )[-1]
        return self.final_norm(x_BLD) if self.final_norm is not None else x_BLD

    def attention_maps(
        self, tokens_BL, mask_B1LL, positions_BL, *, context_BSD=None, cross_mask_B1LS=None, cross=False
    ) -> list[jnp.ndarray]:
        """Each layer's attention weights `[B, N, L, L]`; with `cross=True` the decoder's
        cross-attention weights `[B, N, L, S]` over the encoder positions instead."""
        x_BLD = self._inputs(tokens_BL, positions_BL)
        maps = []
        for block in self.blocks:
            self_map, cross_map = block.attention_maps(
                x_BLD, mask_B1LL, positions_BL, context_BSD, cross_mask_B1LS
            )
            maps.append(cross_map if cross else self_map)
            x_BLD = block(x_BLD, mask_B1LL, positions_BL, context_BSD, cross_mask_B1LS)
        return maps

    def init_cache(
        self, batch_size: int, num_slots: int, *, context_BSD=None, context_valid_BS=None
    ) -> KVCache:
        """An empty KV cache of `num_slots` token slots per row.

        A decoder (cross-attention) also caches every block's keys and values of the encoder
        output `context_BSD` (real source tokens: `context_valid_BS`), computed here once.
        """
        cfg = self.cfg
        shape = (batch_size, num_slots, cfg.num_heads, cfg.head_dim)
        zeros = lambda: jnp.zeros(shape, jnp.dtype(cfg.dtype))  # noqa: E731
        cross = None
        if self.blocks[0].cross is not None:
            if context_BSD is None or context_valid_BS is None:
                raise ValueError("a decoder's cache needs the encoder output and its valid positions")
            cross = [block.cross.keys_values(context_BSD) for block in self.blocks]
        return KVCache(
            kv=[{"k": zeros(), "v": zeros()} for _ in range(cfg.num_layers)],
            valid_BS=jnp.zeros((batch_size, num_slots), bool),
            index=jnp.zeros((), jnp.int32),
            cross=cross,
            cross_valid_BS=context_valid_BS if cross is not None else None,
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
        B, T = tokens_BT.shape
        valid_BS = jax.lax.dynamic_update_slice_in_dim(cache.valid_BS, valid_BT, cache.index, axis=1)
        mask_B1TS = make_cache_mask(valid_BS, cache.index, T, prefix_BT=prefix_BT)
        cross_mask_B1TS = None
        if cache.cross is not None:
            S = cache.cross_valid_BS.shape[1]
            cross_mask_B1TS = jnp.broadcast_to(cache.cross_valid_BS[:, None, None, :], (B, 1, T, S))
        x_BTD = self._inputs(tokens_BT, positions_BT)
        new_kv = []
        for i, (block, kv) in enumerate(zip(self.blocks, cache.kv, strict=True)):
            cross_kv = cache.cross[i] if cache.cross is not None else None
            x_BTD, kv = block.extend(
                x_BTD, mask_B1TS, positions_BT, kv, cache.index, cross_kv, cross_mask_B1TS
            )
            new_kv.append(kv)
        h_BTD = self.final_norm(x_BTD) if self.final_norm is not None else x_BTD
        return self.logits(h_BTD), dataclasses.replace(
            cache, kv=new_kv, valid_BS=valid_BS, index=cache.index + T
        )

    def logits(self, h_xD) -> jnp.ndarray:
        """Vocabulary logits (float32) for hidden states of any leading shape, via the tied embedding."""
        return vocab_logits(self.head_inputs(h_xD), *self.output_projection(), self.cfg.dtype)

    def head_inputs(self, h_xD) -> jnp.ndarray:
        """What the vocabulary projection reads: the hidden states, or BERT's head transform of them."""
        return h_xD if self.head is None else self.head(h_xD)

    def output_projection(self) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """The vocabulary projection's (weights `[V, D]`: the tied embedding, output bias `[V]` or
        None), as stored: `logits(h) = vocab_logits(head_inputs(h), *output_projection(), dtype)`.
        A loss that never holds the logits of a whole batch (train/objectives/vocab_loss.py)
        projects chunks of `head_inputs` through them itself."""
        return self.embed.embedding[...], None if self.head is None else self.head.bias[...]

    def __call__(self, tokens_BL, mask_B1LL, positions_BL, *, context_BSD=None, cross_mask_B1LS=None):
        return self.logits(
            self.hidden_states(
                tokens_BL, mask_B1LL, positions_BL, context_BSD=context_BSD, cross_mask_B1LS=cross_mask_B1LS
            )
        )


def vocab_logits(h_xD, w_VD, b_V, dtype: str) -> jnp.ndarray:
    """float32 logits `[..., V]` of `h_xD` through `w_VD` (and `b_V`): the product in `dtype`, as
    `nnx.Embed.attend` computes it, the bias added in float32."""
    dt = jnp.dtype(dtype)
    logits_xV = jnp.dot(h_xD.astype(dt), w_VD.astype(dt).T).astype(jnp.float32)
    return logits_xV if b_V is None else logits_xV + b_V.astype(jnp.float32)


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
