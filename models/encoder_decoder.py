"""The encoder-decoder Transformer (Vaswani et al. 2017; T5's layout) from the shared block.

Three attention kinds (claim C10), all the one `Attention` module under different masks and
inputs: encoder self-attention under a bidirectional mask, decoder self-attention under a
causal mask, and cross-attention with queries from the decoder and keys and values from the
encoder's output. The encoder is a `Transformer`; the decoder is a `Transformer` whose blocks
carry a cross-attention sublayer. The masks come from the caller (`models.masks`), as
everywhere else.

The interface every seq2seq model here shares (the LSTM baselines in models/lstm_seq2seq.py
too), which the seq2seq objective calls:

    memory = model.encode_source(src_BS, src_mask_B1SS, src_positions_BS)
    h_BTD = model.decode(memory, tokens_BT, mask_B1TT, positions_BT, cross_mask_B1TS)
    logits = model.logits(h_BTD)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from models.transformer import KVCache, Transformer, TransformerConfig


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig:
    """Two stacks of the shared block's shape; the decoder's blocks add cross-attention."""

    stack: TransformerConfig  # shapes and options of each stack; num_layers is per stack
    share_embeddings: bool = True  # one token embedding for source, target and output head
    arch: str = "encdec"


class EncoderDecoder(nnx.Module):
    """An encoder (bidirectional) and a decoder (causal, with cross-attention) built from the shared
    block, with one token embedding shared by source, target and output head by default."""

    def __init__(self, cfg: EncoderDecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Transformer(cfg.stack, rngs=rngs)
        self.decoder = Transformer(cfg.stack, rngs=rngs, cross_attention=True)
        if cfg.share_embeddings:
            # One module referenced twice: one parameter, trained by both stacks and the head.
            self.decoder.embed = self.encoder.embed

    def encode_source(self, src_BS, mask_B1SS, positions_BS) -> jnp.ndarray:
        """The encoder's final hidden states `[B, S, D]`: what cross-attention reads."""
        return self.encoder.hidden_states(src_BS, mask_B1SS, positions_BS)

    def decode(self, memory_BSD, tokens_BT, mask_B1TT, positions_BT, cross_mask_B1TS) -> jnp.ndarray:
        """The decoder's final hidden states `[B, T, D]` (teacher forcing: all targets at once)."""
        return self.decoder.hidden_states(
            tokens_BT, mask_B1TT, positions_BT, context_BSD=memory_BSD, cross_mask_B1LS=cross_mask_B1TS
        )

    def logits(self, h_xD) -> jnp.ndarray:
        return self.decoder.logits(h_xD)

    def init_cache(self, memory_BSD, src_valid_BS, num_slots: int) -> KVCache:
        """A decoding cache: empty self-attention slots, and the encoder's keys and values."""
        return self.decoder.init_cache(
            memory_BSD.shape[0], num_slots, context_BSD=memory_BSD, context_valid_BS=src_valid_BS
        )

    def extend(self, tokens_BT, positions_BT, valid_BT, cache: KVCache) -> tuple[jnp.ndarray, KVCache]:
        """T new target tokens against the cache (see `Transformer.extend`)."""
        return self.decoder.extend(tokens_BT, positions_BT, valid_BT, cache)

    def attention_maps(
        self, src_BS, src_mask_B1SS, src_positions_BS, tokens_BT, mask_B1TT, positions_BT, cross_mask_B1TS
    ) -> dict[str, list[jnp.ndarray]]:
        """Per layer, the three kinds: `encoder` `[B, N, S, S]`, `decoder` `[B, N, T, T]` and
        `cross` `[B, N, T, S]`."""
        memory_BSD = self.encode_source(src_BS, src_mask_B1SS, src_positions_BS)
        kw = dict(context_BSD=memory_BSD, cross_mask_B1LS=cross_mask_B1TS)
        return {
            "encoder": self.encoder.attention_maps(src_BS, src_mask_B1SS, src_positions_BS),
            "decoder": self.decoder.attention_maps(tokens_BT, mask_B1TT, positions_BT, **kw),
            "cross": self.decoder.attention_maps(tokens_BT, mask_B1TT, positions_BT, cross=True, **kw),
        }
