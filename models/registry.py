"""The model zoo in one table: `arch` -> (config class, module class, how a run config builds it).

Adding an architecture touches this file (and the model's own): the trainer, the config checks,
the benchmark and `train.inference.load.load_trained` all choose a model through it. A model config
is built from a run config (`model_config`) or from the `model` section of a checkpoint's run
identity (`config_from_identity`), and `make_model` builds the module a config describes.

The run config is read here and nowhere else in `models/`: `model.*` fields, plus the two run
fields that shape a model (`mask`: an LSTM's direction; `seq2seq.share_embeddings`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from models.errors import ConfigError
from models.lstm import LSTMLM, LSTMConfig
from models.lstm_seq2seq import LSTMSeq2Seq, LSTMSeq2SeqConfig
from models.transformer import Transformer, TransformerConfig
from models.transformer_config import attention_impl_for, loss_impl_for

ModelConfig = TransformerConfig | LSTMConfig | EncoderDecoderConfig | LSTMSeq2SeqConfig


def _transformer(config: Any, vocab_size: int) -> TransformerConfig:
    return TransformerConfig(vocab_size=vocab_size, **config.model.to_dict())


def _encdec(config: Any, vocab_size: int) -> EncoderDecoderConfig:
    return EncoderDecoderConfig(
        _transformer(config, vocab_size), share_embeddings=config.seq2seq.share_embeddings
    )


def _encdec_from_identity(fields: dict[str, Any]) -> EncoderDecoderConfig:
    rest = {k: v for k, v in fields.items() if k != "stack"}
    return EncoderDecoderConfig(TransformerConfig(**fields["stack"]), **rest)


def _lstm(config: Any, vocab_size: int) -> LSTMConfig:
    # The LSTM realises the mask by its direction (see models/lstm.py).
    m = config.model
    return LSTMConfig(vocab_size, m.d_model, m.num_layers, bidirectional=config.mask != "causal")


def _lstm_seq2seq(attention: bool) -> Callable[[Any, int], LSTMSeq2SeqConfig]:
    def build(config: Any, vocab_size: int) -> LSTMSeq2SeqConfig:
        m = config.model
        return LSTMSeq2SeqConfig(vocab_size, m.d_model, m.num_layers, attention=attention)

    return build


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture: its config and module classes and how a run config or a checkpoint's
    identity becomes its model config."""

    config_class: type
    module_class: type[nnx.Module]
    from_run: Callable[[Any, int], Any]  # (run config, vocab size) -> model config
    seq2seq: bool = False  # an encoder-decoder: objective "seq2seq", a seq2seq or span dataset
    from_identity: Callable[[dict[str, Any]], Any] | None = None  # default: config_class(**fields)


ARCHS: dict[str, Arch] = {
    "transformer": Arch(TransformerConfig, Transformer, _transformer),
    "lstm": Arch(LSTMConfig, LSTMLM, _lstm),
    "encdec": Arch(EncoderDecoderConfig, EncoderDecoder, _encdec, True, _encdec_from_identity),
    "lstm_seq2seq": Arch(LSTMSeq2SeqConfig, LSTMSeq2Seq, _lstm_seq2seq(False), True),
    # Same config class: its `attention` field, not its `arch`, tells the two apart.
    "lstm_attention": Arch(LSTMSeq2SeqConfig, LSTMSeq2Seq, _lstm_seq2seq(True), True),
}
SEQ2SEQ_ARCHS: tuple[str, ...] = tuple(name for name, arch in ARCHS.items() if arch.seq2seq)


def model_config(config: Any, vocab_size: int) -> ModelConfig:
    """The model config of a run config; raises `ConfigError` naming each bad `model.*` field."""
    arch = config.model.arch
    if arch not in ARCHS:
        raise ConfigError(f"model.arch={arch!r}: use one of {tuple(ARCHS)}")
    return ARCHS[arch].from_run(config, vocab_size)


def for_platform(cfg: ModelConfig, platform: str) -> ModelConfig:
    """`cfg` with `attention_impl` and `loss_impl` "auto" made `platform`'s choices
    (`attention_impl_for`, `loss_impl_for`)."""
    if isinstance(cfg, TransformerConfig):
        return dataclasses.replace(
            cfg,
            attention_impl=attention_impl_for(cfg.attention_impl, platform),
            loss_impl=loss_impl_for(cfg.loss_impl, platform),
        )
    if isinstance(cfg, EncoderDecoderConfig):
        return dataclasses.replace(cfg, stack=for_platform(cfg.stack, platform))
    return cfg


def config_from_identity(fields: dict[str, Any]) -> ModelConfig:
    """The model config stored in a checkpoint's identity (`dataclasses.asdict` of it)."""
    arch = ARCHS[fields["arch"]]
    return arch.from_identity(fields) if arch.from_identity else arch.config_class(**fields)


def make_model(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    module_class = next(a.module_class for a in ARCHS.values() if isinstance(cfg, a.config_class))
    return module_class(cfg, rngs=rngs)
