"""Loading a trained model for inference: any writer's device count, one CPU device, no optimizer."""

from __future__ import annotations

import json
import os
import shutil

import jax
import pytest
from conftest import micro_config

from models import registry
from train.checkpoint.restore import CheckpointMismatch
from train.data.sources import make_source
from train.inference.load import load_trained
from train.loop import step as step_lib
from train.loop.build import run_identity
from train.loop.evaluator import Evaluator
from train.objectives import make_objective
from train.tokenizer.vocab import SymbolTokenizer


def _eval_loss(trained) -> float:
    config = micro_config("clm")
    source = make_source(config, "unused")
    graphdef, params, rest = step_lib.split_model(trained.model)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    evaluator = Evaluator(source, make_objective(config, source.vocab_size), graphdef, "causal", sharding)
    return evaluator(params, rest)["loss"]


@pytest.mark.slow
def test_loads_a_four_device_checkpoint_on_one_cpu_device_and_evaluates_the_same(four_device_run):
    """The shared run of 4 devices (data 2 x fsdp 2, state sharded in pairs; conftest)."""
    trained = load_trained(four_device_run)
    leaves = jax.tree.leaves(step_lib.split_model(trained.model)[1])
    assert {d for leaf in leaves for d in leaf.devices()} == {jax.devices("cpu")[0]}
    assert trained.step == 40 and trained.mask_kind == "causal" and trained.objective_name == "clm"
    assert trained.config.model.d_model == 32 and trained.config.is_locked
    summary = json.load(open(os.path.join(four_device_run, "summary.json")))
    assert summary["devices"] == 4
    assert _eval_loss(trained) == pytest.approx(summary["eval"]["loss"], rel=1e-5)
    # An earlier step, by number or by its folder, is another model.
    earlier = load_trained(four_device_run, step=20)
    assert earlier.step == 20
    assert load_trained(os.path.join(four_device_run, "checkpoints", "20")).step == 20
    assert _eval_loss(earlier) != pytest.approx(summary["eval"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_a_step_folder_copied_on_its_own_still_loads(four_device_run, tmp_path):
    copy = tmp_path / "drive" / "gpt_step40"
    shutil.copytree(os.path.join(four_device_run, "checkpoints", "40"), copy)
    trained = load_trained(str(copy))
    assert trained.config is None  # no workdir around it; the identity alone rebuilds the model
    assert isinstance(trained.tokenizer, SymbolTokenizer)
    assert _eval_loss(trained) == pytest.approx(_eval_loss(load_trained(four_device_run)), rel=1e-6)


@pytest.mark.slow
def test_a_checkpoint_of_another_model_names_the_fields_that_differ(four_device_run):
    config = micro_config("clm", **{"model.d_model": 64, "model.num_heads": 4})
    model_cfg = registry.model_config(config, 23)
    with pytest.raises(CheckpointMismatch, match=r"model\.d_model: 32 in the checkpoint, 64 now") as e:
        load_trained(four_device_run, expect=run_identity(config, model_cfg))
    assert "model.num_heads: 2 in the checkpoint, 4 now" in str(e.value)
    same = micro_config("clm")
    load_trained(four_device_run, expect=run_identity(same, registry.model_config(same, 23)))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_trained(os.path.join(four_device_run, "tensorboard"))
    with pytest.raises(FileNotFoundError, match="has no step 7"):
        load_trained(four_device_run, step=7)


def test_symbol_tokenizer_round_trips_and_names_bad_words():
    tok = SymbolTokenizer(vocab_size=23)
    ids = tok.encode(["<bos> s0 s15 <mask> s3"])[0]
    assert ids == [1, 7, 22, 4, 10]
    assert tok.decode(ids) == "<bos> s0 s15 <mask> s3"
    with pytest.raises(ValueError, match="s0 .. s15"):
        tok.encode(["s16"])
