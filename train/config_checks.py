"""Checks a config before anything is built or compiled; each error names the field and the fix."""

from __future__ import annotations

from typing import Any

from models.masks import MASK_KINDS
from models.positions import POSITION_KINDS
from models.transformer import ATTN_SCALES, NORM_KINDS, NORM_POSITIONS
from train.data.seq2seq_tasks import TASKS
from train.objectives import OBJECTIVES
from train.step import SEQ2SEQ_ARCHS


class ConfigError(ValueError):
    """A config that cannot work. The message names the field."""


def validate(config: Any) -> None:
    errors: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    m = config.model
    archs = ("transformer", "lstm", *SEQ2SEQ_ARCHS)
    need(m.arch in archs, f"model.arch={m.arch!r}: use one of {archs}")
    seq2seq_data = config.dataset.startswith(("seq2seq:", "span:"))
    need(
        (config.objective == "seq2seq") == (m.arch in SEQ2SEQ_ARCHS) == seq2seq_data,
        f"objective={config.objective!r}, model.arch={m.arch!r}, dataset={config.dataset!r}: an "
        f"encoder-decoder run needs all three of objective='seq2seq', model.arch in {SEQ2SEQ_ARCHS} and "
        "dataset 'seq2seq:TASK' or 'span:BASE' (see configs/seq2seq.py); a language model none of them",
    )
    need(
        config.objective != "seq2seq" or config.mask == "causal",
        f"objective='seq2seq' with mask={config.mask!r}: the decoder must be causal (mask='causal'); "
        "the encoder is always bidirectional",
    )
    need(
        not (m.arch == "lstm" and config.mask == "prefix"),
        "model.arch='lstm' has no prefix-LM form; use mask='causal' or 'bidirectional'",
    )
    need(config.objective in OBJECTIVES, f"objective={config.objective!r}: use one of {OBJECTIVES}")
    need(config.mask in MASK_KINDS, f"mask={config.mask!r}: use one of {MASK_KINDS}")
    needs_prefix = config.objective in ("prefix_lm", "hybrid")
    need(
        needs_prefix == (config.mask == "prefix"),
        f"objective={config.objective!r} with mask={config.mask!r}: the 'prefix' mask takes its "
        "per-row prefix from the objective, so objectives 'prefix_lm' and 'hybrid' need "
        "mask='prefix' and the others must not use it (see configs/prefix_lm.py, configs/hybrid.py)",
    )
    need(
        0.0 <= config.hybrid.causal_fraction <= 1.0,
        f"hybrid.causal_fraction={config.hybrid.causal_fraction} must be in [0, 1]",
    )
    need(
        not (config.objective == "clm" and config.mask != "causal"),
        f"objective='clm' with mask={config.mask!r} lets each position see the token it must "
        "predict; use mask='causal' for next-token prediction",
    )
    kind, _, arg = config.dataset.partition(":")
    span = kind == "span"
    if span:  # span corruption of a language-modelling dataset
        kind, _, arg = arg.partition(":")
    need(
        (kind == "hmm" and not arg)
        or (kind in ("text", "tfds") and bool(arg))
        or (kind == "seq2seq" and arg in TASKS and not span),
        f"dataset={config.dataset!r}: use 'hmm', 'text:GLOB', 'tfds:NAME[/CONFIG]', 'seq2seq:TASK' "
        f"(TASK one of {TASKS}) or 'span:' followed by one of the language-modelling datasets",
    )
    if config.dataset.startswith("seq2seq:"):
        s = config.seq2seq
        need(
            1 <= s.min_len <= s.max_len and s.max_len + 2 <= config.seq_len,
            f"seq2seq.min_len={s.min_len}, seq2seq.max_len={s.max_len}: need 1 <= min_len <= max_len and "
            f"max_len + 2 <= seq_len={config.seq_len} (a target adds BOS and EOS); raise seq_len",
        )
        need(
            len(s.eval_lengths) > 0 and max(s.eval_lengths) + 2 <= config.seq_len,
            f"seq2seq.eval_lengths={tuple(s.eval_lengths)} must be non-empty and at most seq_len - 2",
        )

    for field in ("num_layers", "d_model", "num_heads", "mlp_dim", "max_len"):
        need(m[field] > 0, f"model.{field}={m[field]} must be positive")
    if m.num_heads > 0 and m.arch in ("transformer", "encdec"):
        need(
            m.d_model % m.num_heads == 0,
            f"model.num_heads={m.num_heads} does not divide model.d_model={m.d_model}; "
            "pick a head count that divides the width",
        )
        need(
            m.position != "rotary" or (m.d_model // max(m.num_heads, 1)) % 2 == 0,
            "model.position='rotary' needs an even head dim (model.d_model / model.num_heads)",
        )
    need(m.position in POSITION_KINDS, f"model.position={m.position!r}: use one of {POSITION_KINDS}")
    need(m.norm in NORM_KINDS, f"model.norm={m.norm!r}: use one of {NORM_KINDS}")
    need(
        m.norm_position in NORM_POSITIONS,
        f"model.norm_position={m.norm_position!r}: use one of {NORM_POSITIONS}",
    )
    need(m.attn_scale in ATTN_SCALES, f"model.attn_scale={m.attn_scale!r}: use one of {ATTN_SCALES}")
    need(
        m.max_len >= config.seq_len,
        f"model.max_len={m.max_len} is shorter than seq_len={config.seq_len}; raise "
        "model.max_len or lower seq_len",
    )
    need(config.seq_len >= 2, f"seq_len={config.seq_len} must be at least 2")

    need(
        config.grad_accum_steps >= 1 and config.batch_size % max(config.grad_accum_steps, 1) == 0,
        f"grad_accum_steps={config.grad_accum_steps} must be >= 1 and divide batch_size={config.batch_size}",
    )
    need(
        m.attention_impl != "cudnn" or m.dtype in ("bfloat16", "float16"),
        f"model.attention_impl='cudnn' runs in bfloat16 or float16 only, not model.dtype={m.dtype!r}; "
        "set model.dtype=bfloat16 or use attention_impl='xla'",
    )

    r = config.mlm
    need(0.0 < r.rate < 1.0, f"mlm.rate={r.rate} must be in (0, 1)")
    need(
        r.mask_frac >= 0 and r.random_frac >= 0 and r.mask_frac + r.random_frac <= 1.0,
        f"mlm.mask_frac={r.mask_frac} and mlm.random_frac={r.random_frac} must be >= 0 and "
        "sum to at most 1 (the rest of the selected tokens stay unchanged)",
    )

    for field in (
        "num_train_steps",
        "batch_size",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
    ):
        need(config[field] > 0, f"{field}={config[field]} must be positive")
    if config.log_every_steps > 0:
        need(
            config.checkpoint_every_steps % config.log_every_steps == 0,
            f"checkpoint_every_steps={config.checkpoint_every_steps} must be a multiple of "
            f"log_every_steps={config.log_every_steps}, so a resumed run logs the same windows",
        )
    o = config.optim
    need(o.learning_rate > 0, f"optim.learning_rate={o.learning_rate} must be positive")
    need(
        0 <= o.warmup_steps < config.num_train_steps,
        f"optim.warmup_steps={o.warmup_steps} must be in [0, num_train_steps)",
    )
    need(0.0 <= o.min_lr_ratio <= 1.0, f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
    if config.dataset == "hmm":
        need(config.hmm.eval_sequences > 0, "hmm.eval_sequences must be positive")
        need(
            config.hmm.num_states > 0 and config.hmm.num_symbols > 0,
            "hmm.num_states and hmm.num_symbols must be positive",
        )

    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


def check_batch_divides(batch_size: int, data_devices: int, process_count: int) -> None:
    if batch_size % data_devices or batch_size % process_count:
        raise ConfigError(
            f"batch_size={batch_size} must be divisible by the {data_devices} data-parallel "
            f"devices and the {process_count} processes; change batch_size or mesh.data / mesh.fsdp"
        )
