"""Non-finite losses and gradients: a diverging run stops (exit 3) leaving only finite
checkpoints; `skip` leaves the state untouched at exactly the poisoned steps; the host-side
watch stops at the first bad step, or after `max_skipped_in_a_row` consecutive skips."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config, run_command, train_command

from train.checkpoint.nonfinite import NonFiniteWatch
from train.data.sources import make_source
from train.inference.load import load_trained
from train.loop import step as step_lib
from train.loop.build import build_run
from train.objectives import CausalLM

POISON = 2  # a special token id the data never puts first in a row (rows start with BOS)


@dataclasses.dataclass(frozen=True)
class PoisonedLM(CausalLM):
    """The test hook: a row starting with POISON makes the loss NaN (and so the gradient)."""

    def scores(self, model, batch, mask_kind):
        scores = super().scores(model, batch, mask_kind)
        poisoned = (batch["inputs"][:, 0] == POISON).any()
        return {**scores, "nll_sum": scores["nll_sum"] * jnp.where(poisoned, jnp.nan, 1.0)}


@pytest.mark.slow
def test_skip_leaves_the_state_unchanged_at_exactly_the_poisoned_steps(tmp_path):
    config = micro_config("clm", nonfinite="skip")
    run = build_run(config, str(tmp_path))
    step = jax.jit(
        step_lib.make_train_step(
            run.graphdef, run.tx, PoisonedLM(), "causal", run.schedule, skip_nonfinite=True
        )
    )
    state, batches = run.init_state(), make_source(config, str(tmp_path)).train_iterator()
    poisoned_steps = {2, 5}
    for i in range(1, 7):
        batch = next(batches)
        if i in poisoned_steps:
            batch = {**batch, "tokens": batch["tokens"].copy()}
            batch["tokens"][0, 0] = POISON
        before = jax.device_get(state)
        state, metrics = step(state, batch)
        after = jax.device_get(state)
        assert int(after.step) == i  # the step advances either way: data and RNG stay aligned
        assert float(metrics["skipped"]) == float(i in poisoned_steps)
        same = jax.tree.leaves(
            jax.tree.map(np.array_equal, (before.params, before.opt_state), (after.params, after.opt_state))
        )
        if i in poisoned_steps:
            assert not np.isfinite(float(metrics["loss"])) and all(same)
        else:
            assert np.isfinite(float(metrics["loss"])) and not all(same)
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(after.params))


def _m(loss: float, grad_norm: float = 1.0) -> dict:
    return {"loss": np.float32(loss), "grad_norm": np.float32(grad_norm)}


def test_the_watch_stops_at_the_first_bad_step_or_after_max_skips_in_a_row():
    stop = NonFiniteWatch("stop", 3)
    assert stop.check([(1, _m(2.0)), (2, _m(1.9))]) is None
    assert (
        stop.check([(3, _m(1.8)), (4, _m(1.0, np.inf)), (5, _m(np.nan))])
        == "step 4: grad_norm=inf (not finite)"
    )
    state = NonFiniteWatch("stop", 3)  # a finite loss and gradient, infinite parameters
    assert state.check([(1, {**_m(2.0), "state_finite": np.float32(0)})]).startswith(
        "step 1: parameters or optimizer state not all finite"
    )
    skip = NonFiniteWatch("skip", 3)
    assert skip.check([(1, _m(np.nan)), (2, _m(np.nan)), (3, _m(1.0))]) is None  # a finite step resets
    assert skip.check([(4, _m(np.nan)), (5, _m(np.inf))]) is None
    assert skip.check([(6, _m(np.nan)), (7, _m(np.nan))]).startswith("step 6: loss=nan, the 3th skipped")


@pytest.mark.slow
def test_a_diverging_run_stops_with_status_3_and_leaves_only_finite_checkpoints(tmp_path):
    workdir = str(tmp_path / "run")
    # Learning rate 300 reached over 39 warmup steps: finite through the first checkpoints, then NaN.
    cmd = train_command(workdir, "clm", **{"optim.learning_rate": 300.0, "optim.warmup_steps": 39})
    result = run_command(cmd)
    assert result.returncode == 3, result.stderr[-2000:]
    bad_step = int(re.search(r"non-finite values at step (\d+): loss=nan", result.stderr).group(1))
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps and max(steps) < bad_step
    assert f"the newest checkpoint, step {max(steps)} in" in result.stderr
    assert "the same config may diverge again from there" in result.stderr
    for s in steps:
        params = jax.tree.leaves(load_trained(workdir, step=s).model)
        assert all(np.isfinite(np.asarray(p)).all() for p in params)
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert lines and max(x["step"] for x in lines) < bad_step
    # Nothing logged from the bad step on (a finite but huge eval loss may have an infinite perplexity).
    assert all(np.isfinite(x[k]) for x in lines for k in ("loss", "grad_norm") if k in x)


def _all_finite(workdir: str, step: int) -> bool:
    return all(
        np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(load_trained(workdir, step=step).model)
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_finite_loss_with_infinite_parameters_is_caught_and_never_saved(mode, tmp_path):
    """Learning rate 3e38: the loss and gradient of a step are finite while the update writes
    infinite parameters. Neither mode may go on from them or end with status 0 (with `skip`, the
    steps are skipped until max_skipped_in_a_row); the checkpoint the message names is finite."""
    workdir = str(tmp_path / "run")
    overrides = {"optim.learning_rate": 3e38, "optim.warmup_steps": 0, "nonfinite": mode}
    overrides |= {"checkpoint_every_steps": 1, "log_every_steps": 1, "max_skipped_in_a_row": 5}
    result = run_command(train_command(workdir, "clm", **overrides))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "parameters or optimizer state not all finite" in result.stderr
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert all(_all_finite(workdir, s) for s in steps)
    if steps:
        assert f"the newest checkpoint, step {steps[-1]} in" in result.stderr
        assert "may diverge again" in result.stderr
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert all(np.isfinite(x["loss"]) for x in lines if x["split"] == "eval")
