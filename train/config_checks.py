"""Checks a config before anything is built or compiled; each error names the field and the fix.

The model's own checks live in its config class (`models/`); `validate` builds the model config
through the registry and collects those messages with the run's, so one `ConfigError` lists
every bad field at once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from models import registry
from models.errors import ConfigError
from models.masks import MASK_KINDS
from train.checkpoint.nonfinite import MODES as NONFINITE_MODES
from train.data.seq2seq_tasks import TASKS
from train.hf import reader as hf_reader
from train.objectives import OBJECTIVE_CLASSES, OBJECTIVE_MASKS, OBJECTIVES
from train.observe.wandb_log import MODES as WANDB_MODES

# Model shapes are checked before the data (and so the vocabulary) exists; no model check reads it.
_ANY_VOCAB = 1

Need = Callable[[bool, str], None]  # records `message` unless `ok`


class Problems(list):
    """The config's errors, collected so that one `ConfigError` lists every bad field at once."""

    def need(self, ok: bool, message: str) -> None:
        if not ok:
            self.append(message)


def validate(config: Any) -> None:
    """Raises one `ConfigError` naming every bad field (and its fix); returns if there is none."""
    problems = Problems()
    for check in CHECKS:
        check(config, problems.need)
    if problems:
        raise ConfigError(list(problems))


def _check_model(config: Any, need: Need) -> None:
    """The model's own checks (its config class), and the model against the objective and data."""
    m = config.model
    seq2seq_archs = registry.SEQ2SEQ_ARCHS
    try:  # an encoder-decoder arch in a config without a seq2seq section is refused below
        if m.arch not in seq2seq_archs or "seq2seq" in config:
            registry.model_config(config, _ANY_VOCAB)
    except ConfigError as e:
        for error in e.errors:
            need(False, error)
    seq2seq_data = config.dataset.startswith(("seq2seq:", "span:"))
    need(
        (config.objective == "seq2seq") == (m.arch in seq2seq_archs) == seq2seq_data,
        f"objective={config.objective!r}, model.arch={m.arch!r}, dataset={config.dataset!r}: an "
        f"encoder-decoder run needs all three of objective='seq2seq', model.arch in {seq2seq_archs} and "
        "dataset 'seq2seq:TASK' or 'span:BASE' (see configs/seq2seq.py); a language model none of them",
    )
    need(
        not (m.arch == "lstm" and config.mask == "prefix"),
        "model.arch='lstm' has no prefix-LM form; use mask='causal' or 'bidirectional'",
    )
    if config.get("init_from"):  # the directory's files and config.json; its shapes once the vocab is known
        try:
            hf_reader.read_config(hf_reader.directory(config.init_from))
        except ConfigError as e:
            for error in e.errors:
                need(False, error)


def _check_objective(config: Any, need: Need) -> None:
    need(config.objective in OBJECTIVES, f"objective={config.objective!r}: use one of {OBJECTIVES}")
    need(config.mask in MASK_KINDS, f"mask={config.mask!r}: use one of {MASK_KINDS}")
    if config.objective in OBJECTIVES and config.mask in MASK_KINDS:
        masks = OBJECTIVE_MASKS[config.objective]
        need(
            config.mask in masks,
            f"objective={config.objective!r} with mask={config.mask!r}: "
            f"{OBJECTIVE_CLASSES[config.objective].mask_note}; use mask=" + " or ".join(map(repr, masks)),
        )
    if config.objective == "hybrid":
        need(
            0.0 <= config.hybrid.causal_fraction <= 1.0,
            f"hybrid.causal_fraction={config.hybrid.causal_fraction} must be in [0, 1]",
        )


def _check_dataset(config: Any, need: Need) -> None:
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
    if config.dataset.startswith("seq2seq:") and "seq2seq" in config:
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
    if config.dataset == "hmm":
        need(config.hmm.eval_sequences > 0, "hmm.eval_sequences must be positive")
        need(
            config.hmm.num_states > 0 and config.hmm.num_symbols > 0,
            "hmm.num_states and hmm.num_symbols must be positive",
        )


def _check_batch(config: Any, need: Need) -> None:
    """Sequence length, batch, gradient accumulation and the MLM corruption rates."""
    m = config.model
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
    r = config.mlm
    need(0.0 < r.rate < 1.0, f"mlm.rate={r.rate} must be in (0, 1)")
    need(
        r.mask_frac >= 0 and r.random_frac >= 0 and r.mask_frac + r.random_frac <= 1.0,
        f"mlm.mask_frac={r.mask_frac} and mlm.random_frac={r.random_frac} must be >= 0 and "
        "sum to at most 1 (the rest of the selected tokens stay unchanged)",
    )


def _check_schedule(config: Any, need: Need) -> None:
    """Steps, logging, evaluation and checkpointing, the non-finite guard and the optimizer."""
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
    need(
        config.checkpoint_every_minutes >= 0,
        f"checkpoint_every_minutes={config.checkpoint_every_minutes} must be >= 0 (0 turns it off)",
    )
    need(config.nonfinite in NONFINITE_MODES, f"nonfinite={config.nonfinite!r}: use one of {NONFINITE_MODES}")
    need(config.max_skipped_in_a_row >= 1, f"max_skipped_in_a_row={config.max_skipped_in_a_row} must be >= 1")
    o = config.optim
    need(o.learning_rate > 0, f"optim.learning_rate={o.learning_rate} must be positive")
    need(
        0 <= o.warmup_steps < config.num_train_steps,
        f"optim.warmup_steps={o.warmup_steps} must be in [0, num_train_steps)",
    )
    need(0.0 <= o.min_lr_ratio <= 1.0, f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")


def _check_observability(config: Any, need: Need) -> None:
    p = config.profile
    need(
        p.start_step >= 0 and p.num_steps >= 0 and (p.num_steps == 0 or p.start_step >= 1),
        f"profile.start_step={p.start_step}, profile.num_steps={p.num_steps}: the trace covers steps "
        "start_step .. start_step + num_steps - 1; start_step >= 1 and num_steps >= 0 (0: no trace)",
    )
    need(config.peak_flops_per_device >= 0, "peak_flops_per_device must be >= 0 (0: data sheet or measured)")
    need(config.eval_samples >= 0, f"eval_samples={config.eval_samples} must be >= 0 (0: none)")
    w = config.wandb
    need(w.mode in WANDB_MODES, f"wandb.mode={w.mode!r}: use one of {WANDB_MODES}")
    if w.project:
        need(
            importlib.util.find_spec("wandb") is not None,
            f"wandb.project={w.project!r} needs the wandb package: pip install -e '.[wandb]' "
            "(or leave wandb.project empty)",
        )


CHECKS: tuple[Callable[[Any, Need], None], ...] = (
    _check_model,
    _check_objective,
    _check_dataset,
    _check_batch,
    _check_schedule,
    _check_observability,
)
