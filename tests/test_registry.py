"""The model registry and the objective table: every architecture builds, round-trips through a
checkpoint identity, and owns its checks; every objective accepts exactly the masks its table lists."""

from __future__ import annotations

import dataclasses
import re

import pytest
from conftest import MICRO_OVERRIDES, micro_config
from flax import nnx

import configs
from models import registry
from models.errors import ConfigError
from models.masks import MASK_KINDS
from models.transformer_config import TransformerConfig
from train.config_checks import validate
from train.loop.build import run_identity
from train.objectives import OBJECTIVE_MASKS

SEQ2SEQ_MICRO = {"seq2seq.max_len": 14, "seq2seq.min_len": 4, "seq2seq.eval_lengths": (8, 14), "seq_len": 16}
# One run config per architecture: the objective whose config file it belongs to, and overrides.
ARCH_RUNS = {
    "transformer": ("clm", {}),
    "lstm": ("mlm", {"model.arch": "lstm"}),
    "encdec": ("seq2seq", {}),
    "lstm_seq2seq": ("seq2seq", {"model.arch": "lstm_seq2seq"}),
    "lstm_attention": ("seq2seq", {"model.arch": "lstm_attention"}),
}


def _run_config(arch: str):
    objective, overrides = ARCH_RUNS[arch]
    micro = {**MICRO_OVERRIDES, **(SEQ2SEQ_MICRO if objective == "seq2seq" else {})}
    return configs.get_config(objective, "tiny", {**micro, **overrides})


def test_every_registered_arch_is_exercised_here():
    assert set(ARCH_RUNS) == set(registry.ARCHS)


@pytest.mark.parametrize("arch", sorted(registry.ARCHS))
def test_each_arch_builds_its_module_and_rebuilds_from_its_checkpoint_identity(arch):
    config = _run_config(arch)
    validate(config)
    cfg = registry.model_config(config, vocab_size=23)
    entry = registry.ARCHS[arch]
    assert isinstance(cfg, entry.config_class)
    assert registry.config_from_identity(dataclasses.asdict(cfg)) == cfg
    model = nnx.eval_shape(lambda: registry.make_model(cfg, nnx.Rngs(0)))
    assert type(model) is entry.module_class
    # The identity a checkpoint stores leaves out only the execution fields, so it rebuilds the
    # same model whatever remat or attention implementation the run used.
    stored = run_identity(config, cfg)["model"]
    assert registry.config_from_identity({**dataclasses.asdict(cfg), **stored}) == cfg
    if arch == "lstm_attention":
        assert cfg.attention and not registry.model_config(_run_config("lstm_seq2seq"), 23).attention
    if arch == "lstm":  # the LSTM realises the mask by its direction
        assert (
            cfg.bidirectional
            and not registry.model_config(micro_config("clm", **{"model.arch": "lstm"}), 23).bidirectional
        )


def test_model_checks_live_in_the_model_config_and_validate_collects_them_all():
    bad = {"model.num_heads": 3, "model.position": "bogus", "model.mlp_dim": 0, "mlm.rate": 2.0}
    with pytest.raises(ConfigError) as from_model:
        TransformerConfig(
            vocab_size=23, d_model=32, num_heads=3, num_layers=2, mlp_dim=0, max_len=32, position="bogus"
        )
    assert len(from_model.value.errors) == 3
    with pytest.raises(ConfigError) as from_run:
        validate(micro_config("mlm", **bad))
    # Every model message, word for word, plus the run's own, in one error.
    assert set(from_model.value.errors) < set(from_run.value.errors)
    assert any(m.startswith("mlm.rate=2.0") for m in from_run.value.errors)
    assert "model.num_heads=3 does not divide model.d_model=32" in str(from_run.value)


@pytest.mark.parametrize("objective", ["clm", "mlm", "prefix_lm", "hybrid"])
@pytest.mark.parametrize("mask", MASK_KINDS)
def test_validate_allows_exactly_the_masks_of_the_objective_table(objective, mask):
    config = micro_config(objective, mask=mask)
    if mask in OBJECTIVE_MASKS[objective]:
        validate(config)
    else:
        with pytest.raises(ConfigError, match=re.escape(f"objective={objective!r} with mask={mask!r}")):
            validate(config)


def test_each_config_file_sets_its_objectives_first_mask():
    for objective, masks in OBJECTIVE_MASKS.items():
        assert configs.get_config(objective).mask == masks[0]


def test_fields_added_later_stay_out_of_the_identity_at_their_defaults():
    """A checkpoint written before `norm_eps`, `activation`, `embed_norm` and `head` existed has
    none of them in its identity: at their defaults a run still matches it and loads it."""
    from models.transformer_config import LATER_FIELDS
    from train.loop.build import run_identity

    config = configs.get_config("clm", "tiny", {})
    identity = run_identity(config, registry.model_config(config, 20))["model"]
    assert not set(LATER_FIELDS) & set(identity)
    assert registry.config_from_identity(identity) == registry.model_config(config, 20)
    bert = configs.get_config("mlm", "bert_base", {})
    assert {"norm_eps", "activation", "embed_norm", "head"} <= set(
        run_identity(bert, registry.model_config(bert, 20))["model"]
    )
