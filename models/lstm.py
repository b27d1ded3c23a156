"""LSTM language models: the recurrent baseline of claims C1 and C11, behind the same interface.

`hidden_states(tokens, mask, positions)` and `logits(h)` match the Transformer's, so the same trainer,
objectives and eval run either. Direction is structural: a left-to-right LSTM for the causal
mask, a bidirectional one (forward and backward states concatenated, then projected back to
the width) for the bidirectional mask; the mask and positions arguments are otherwise unused.
An LSTM must finish step t before step t+1: `jax.lax.scan` over time, the sequential cost the
Transformer avoids.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from models.errors import check, nonpositive


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    """The LSTM baseline's shape: a causal LM runs it left to right, a masked LM bidirectionally."""

    vocab_size: int
    d_model: int
    num_layers: int
    bidirectional: bool = False
    arch: str = "lstm"

    def __post_init__(self):
        check(nonpositive(self, ("num_layers", "d_model")))


def _rnn(d: int, reverse: bool, rngs: nnx.Rngs) -> nnx.RNN:
    return nnx.RNN(nnx.OptimizedLSTMCell(d, d, rngs=rngs), reverse=reverse, keep_order=True, rngs=False)


class LSTMLayer(nnx.Module):
    """Pre-norm LSTM layer with a residual connection; bidirectional layers merge the two
    directions with a projection."""

    def __init__(self, cfg: LSTMConfig, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.forward = _rnn(cfg.d_model, False, rngs)
        self.backward = _rnn(cfg.d_model, True, rngs) if cfg.bidirectional else None
        self.merge = nnx.Linear(2 * cfg.d_model, cfg.d_model, rngs=rngs) if cfg.bidirectional else None

    def __call__(self, x_BLD):
        B, _, D = x_BLD.shape
        zeros = (jnp.zeros((B, D), x_BLD.dtype), jnp.zeros((B, D), x_BLD.dtype))
        h_BLD = self.norm(x_BLD)
        out_BLD = self.forward(h_BLD, initial_carry=zeros)
        if self.backward is not None:
            back_BLD = self.backward(h_BLD, initial_carry=zeros)
            out_BLD = self.merge(jnp.concatenate([out_BLD, back_BLD], -1))
        return x_BLD + out_BLD  # residual, as between Transformer blocks


class LSTMLM(nnx.Module):
    """The LSTM baseline behind the Transformer's interface (`hidden_states`, `logits`), trained by
    the same trainer and objectives; the mask kind picks the direction."""

    def __init__(self, cfg: LSTMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab_size, cfg.d_model, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
        )
        self.layers = nnx.List([LSTMLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)

    def hidden_states(self, tokens_BL, mask_B1LL=None, positions_BL=None, *, key_limits=None) -> jnp.ndarray:
        del mask_B1LL, positions_BL, key_limits  # direction is structural; order is in the recurrence
        x_BLD = self.embed(tokens_BL)
        for layer in self.layers:
            x_BLD = layer(x_BLD)
        return self.final_norm(x_BLD)

    def logits(self, h_xD) -> jnp.ndarray:
        return self.embed.attend(h_xD).astype(jnp.float32)

    def __call__(self, tokens_BL, mask_B1LL=None, positions_BL=None) -> jnp.ndarray:
        return self.logits(self.hidden_states(tokens_BL, mask_B1LL, positions_BL))
