"""The pure train step: a tiny model overfits one batch with either objective."""

import json

import jax
import numpy as np
import pytest

from models import registry
from models.errors import ConfigError
from train.config_checks import validate
from train.data.sources import make_source
from train.loop import step as step_lib
from train.loop.evaluator import fixed_eval_set
from train.loop.trainer import train_and_evaluate
from train.objectives import make_objective


# MLM sees a fresh mask every step, so memorising all positions of the batch takes longer.
@pytest.mark.slow
@pytest.mark.parametrize("objective_name,steps", [("clm", 300), ("mlm", 1500)])
def test_tiny_model_overfits_one_batch(objective_name, steps, micro, tmp_path):
    config = micro(
        objective_name,
        num_train_steps=steps,
        **{
            "model.d_model": 64,
            "model.mlp_dim": 256,
            "optim.warmup_steps": 10,
            "optim.weight_decay": 0.0,
            "hmm.eval_sequences": 256,
        },
    )
    source = make_source(config, str(tmp_path))
    cfg = registry.model_config(config, source.vocab_size)
    tx = step_lib.make_optimizer(config)
    objective = make_objective(config, source.vocab_size)
    graphdef, _ = step_lib.abstract_model(cfg)
    state = jax.jit(lambda: step_lib.init_state(cfg, tx, 0))()
    train_step = step_lib.make_train_step(
        graphdef, tx, objective, config.mask, step_lib.make_schedule(config)
    )
    batch = next(source.train_iterator())  # the same batch every step

    @jax.jit
    def train(state, batch):  # every step in one compiled loop: no dispatch and sync per step
        def one(state, _):
            state, metrics = train_step(state, batch)
            return state, metrics["loss"]

        return jax.lax.scan(one, state, length=config.num_train_steps)

    state, losses = train(state, batch)
    losses = np.asarray(losses)
    # The best loss any model can reach on unseen data from this HMM (its eval set).
    optimum = fixed_eval_set(source, objective)[2]["oracle_loss"]
    # Far below the optimum for unseen data: only memorising this batch gets there.
    assert losses[0] > 0.9 * optimum
    assert np.mean(losses[-20:]) < 0.3 * optimum, (np.mean(losses[-20:]), optimum)
    assert int(state.step) == config.num_train_steps


@pytest.mark.slow
@pytest.mark.parametrize("objective_name", ["prefix_lm", "hybrid"])
def test_prefix_lm_and_hybrid_train_and_evaluate_against_the_clm_optimum(objective_name, micro, tmp_path):
    config = micro(objective_name, num_train_steps=60)
    summary = train_and_evaluate(config, str(tmp_path))
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    train = [x for x in lines if x["split"] == "train"]
    # From a uniform guess (log 23 = 3.1 nats) to at least the unigram statistics.
    assert train[0]["loss"] > 3.0 and summary["eval"]["loss"] < 1.02 * summary["eval"]["unigram_loss"]
    # Both are evaluated as next-token predictors against the CLM optimum (the hybrid in its
    # causal view, on every position; the prefix LM on the positions after each row's split).
    clm = micro("clm")
    clm_source = make_source(clm, str(tmp_path / "clm"))
    reference = fixed_eval_set(clm_source, make_objective(clm, clm_source.vocab_size))[2]
    predicted = summary["eval"]["predicted_tokens"]
    if objective_name == "hybrid":
        assert summary["eval"]["oracle_loss"] == pytest.approx(reference["oracle_loss"], rel=1e-6)
        assert predicted == 16 * 31
    else:
        assert 0.3 * 16 * 31 < predicted < 0.7 * 16 * 31
    assert 0 < summary["eval"]["oracle_loss"] < summary["eval"]["loss"]


def test_prefix_objectives_need_the_prefix_mask(micro):
    with pytest.raises(ConfigError, match="objective='prefix_lm' with mask='causal'"):
        validate(micro("prefix_lm", mask="causal"))
    with pytest.raises(ConfigError, match="objective='mlm' with mask='prefix'"):
        validate(micro("mlm", mask="prefix"))
