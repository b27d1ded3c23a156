"""LSTM encoder-decoders, the recurrent baselines of claim C11, behind the seq2seq interface.

- `attention=False` (Sutskever et al. 2014; Cho et al. 2014): the decoder starts from the
  encoder's final state and never sees the source again. Everything it knows about the input
  has passed through one fixed-size vector per layer, `(c, h)`, the bottleneck.
- `attention=True` (Luong et al. 2015, "general" score): the same, plus attention of every
  decoder state over all encoder states, so the source stays readable at any length.

Interface as in models/encoder_decoder.py: `encode_source` returns the memory (all encoder
states and each layer's final carry), `decode` runs the decoder with teacher forcing,
`logits` projects through the tied embedding. The recurrence is `jax.lax.scan` over time.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.errors import check, nonpositive
from models.masks import dense_mask


@dataclasses.dataclass(frozen=True)
class LSTMSeq2SeqConfig:
    """An LSTM encoder-decoder's shape; `attention` adds Luong attention over the encoder states."""

    vocab_size: int
    d_model: int
    num_layers: int  # per side: encoder layer i hands its final state to decoder layer i
    attention: bool = False
    arch: str = "lstm_seq2seq"

    def __post_init__(self):
        check(nonpositive(self, ("num_layers", "d_model")))


def _rnn(d: int, rngs: nnx.Rngs) -> nnx.RNN:
    return nnx.RNN(nnx.OptimizedLSTMCell(d, d, rngs=rngs), rngs=False)


class LSTMSeq2Seq(nnx.Module):
    """LSTM encoder-decoder: without attention the source reaches the decoder only through each
    layer's final (c, h) pair (a fixed-vector bottleneck); with it, through Luong attention."""

    def __init__(self, cfg: LSTMSeq2SeqConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nnx.Embed(cfg.vocab_size, d, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.encoder = nnx.List([_rnn(d, rngs) for _ in range(cfg.num_layers)])
        self.decoder = nnx.List([_rnn(d, rngs) for _ in range(cfg.num_layers)])
        self.score = nnx.Linear(d, d, use_bias=False, rngs=rngs) if cfg.attention else None
        self.combine = nnx.Linear(2 * d, d, rngs=rngs) if cfg.attention else None
        self.final_norm = nnx.LayerNorm(d, rngs=rngs)

    def encode_source(self, src_BS, mask_B1SS, positions_BS=None) -> dict:
        """`{"states_BSD": every top-layer state, "final": each layer's carry after the last real token}`.

        The source length is read off the mask: the first query, a real token of a right-padded
        row, sees exactly the real keys of its row.
        """
        del positions_BS  # order is in the recurrence
        lengths_B = dense_mask(mask_B1SS)[:, 0, 0, :].sum(-1).astype(jnp.int32)
        B, _ = src_BS.shape
        x_BSD = self.embed(src_BS)
        zeros = (jnp.zeros((B, self.cfg.d_model), x_BSD.dtype),) * 2
        finals = []
        for rnn in self.encoder:
            carry, x_BSD = rnn(x_BSD, initial_carry=zeros, seq_lengths=lengths_B, return_carry=True)
            finals.append(carry)
        return {"states_BSD": x_BSD, "final": finals}

    def decode(self, memory: dict, tokens_BT, mask_B1TT=None, positions_BT=None, cross_mask_B1TS=None):
        """Decoder hidden states `[B, T, D]`; causal by construction (a left-to-right LSTM)."""
        del mask_B1TT, positions_BT
        x_BTD = self.embed(tokens_BT)
        for rnn, carry in zip(self.decoder, memory["final"], strict=True):
            x_BTD = rnn(x_BTD, initial_carry=carry)
        if self.cfg.attention:
            # After the recurrence, so every target step attends at once (no input feeding).
            states_BSD = memory["states_BSD"]
            scores_BTS = jnp.einsum("btd,bsd->bts", self.score(x_BTD), states_BSD)
            scores_BTS = jnp.where(dense_mask(cross_mask_B1TS)[:, 0], scores_BTS, -1e30)
            context_BTD = jnp.einsum("bts,bsd->btd", jax.nn.softmax(scores_BTS, -1), states_BSD)
            x_BTD = jnp.tanh(self.combine(jnp.concatenate([x_BTD, context_BTD], -1)))
        return self.final_norm(x_BTD)

    def logits(self, h_xD) -> jnp.ndarray:
        return self.embed.attend(h_xD).astype(jnp.float32)
