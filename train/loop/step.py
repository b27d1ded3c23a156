"""The pure parts of training: train state, optimizer, `train_step` and `eval_step`.

`train_step(state, batch) -> (state, metrics)` is a pure function of its arguments: the data
batch, the step's RNG (folded from the state's key and step) and the objective's transform are
all inside it, so it is jitted once, with shardings and buffer donation, and a resumed run
replays exactly the computation an uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from models.registry import ModelConfig, make_model
from train.objectives import Batch, Objective
from train.observe.layer_stats import at_log_steps


@struct.dataclass
class TrainState:
    """Everything a step reads and writes; checkpointed whole, so a resumed run replays exactly."""

    step: jax.Array  # int32 scalar: number of updates applied
    params: Any  # pure dict of arrays (nnx.to_pure_dict), stable across Flax versions
    model_state: Any  # the model's other variables (BatchNorm statistics), usually {}
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key; the step's key is fold_in(rng, step)


def make_schedule(config: Any) -> optax.Schedule:
    o = config.optim
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.learning_rate,
        warmup_steps=o.warmup_steps,
        decay_steps=config.num_train_steps,
        end_value=o.learning_rate * o.min_lr_ratio,
    )


def make_optimizer(config: Any) -> optax.GradientTransformation:
    """AdamW on the schedule, after global-norm clipping; weight decay on matrices only."""
    o = config.optim
    # Decay matrices (projections, embeddings), not gains and biases.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip_norm),
        optax.adamw(
            make_schedule(config),
            b1=o.b1,
            b2=o.b2,
            eps=o.eps,
            weight_decay=o.weight_decay,
            mask=decay_mask,
        ),
    )


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, Any, Any]:
    """(graph definition, trained parameters, other variables), the latter two as pure dicts."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, Any]:
    """The model's graph definition and parameter shapes, without allocating anything."""
    graphdef, params, _ = split_model(nnx.eval_shape(lambda: make_model(cfg, nnx.Rngs(0))))
    return graphdef, params


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Meant to run under `jax.jit(..., out_shardings=...)` so parameters are born sharded."""
    params_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    _, params, model_state = split_model(make_model(cfg, nnx.Rngs(params=params_rng)))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=train_rng,
    )


def _scores_and_grads(
    graphdef: nnx.GraphDef,
    objective: Objective,
    mask_kind: str,
    params: Any,
    model_state: Any,
    model_batch: Batch,
) -> tuple[dict[str, jax.Array], Any, Any]:
    """The objective's score sums on `model_batch`, the gradient of their `nll_sum`, and the
    model state after the forward pass (BatchNorm statistics)."""

    def nll_sum(params):
        model = nnx.merge(graphdef, params, model_state)
        scores = objective.scores(model, model_batch, mask_kind)
        return scores["nll_sum"], (scores, split_model(model)[2])

    (_, (scores, model_state)), grads = jax.value_and_grad(nll_sum, has_aux=True)(params)
    return scores, grads, model_state


def _accumulated(
    scores_and_grads: Callable, params: Any, model_state: Any, model_batch: Batch, k: int
) -> tuple[dict[str, jax.Array], Any, Any]:
    """Score and gradient sums over `k` micro-batches of `model_batch`, in one `lax.scan`.

    Micro-batch i takes rows i, i + k, i + 2k, ...: every device's rows feed every micro-batch,
    so each stays spread over the data axes."""
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), model_batch)

    def accumulate(carry, micro_batch):
        scores, grads, model_state = carry
        s, g, model_state = scores_and_grads(params, model_state, micro_batch)
        s = {key: s[key] for key in scores}
        return (jax.tree.map(jnp.add, scores, s), jax.tree.map(jnp.add, grads, g), model_state), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    init_scores = {key: jnp.zeros((), jnp.float32) for key in ("nll_sum", "correct_sum", "weight_sum")}
    (scores, grads, model_state), _ = jax.lax.scan(accumulate, (init_scores, zeros, model_state), micro)
    return scores, grads, model_state


def all_finite(tree: Any) -> jax.Array:
    """Whether every float in `tree` is finite (one boolean, reduced on device)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    objective: Objective,
    mask_kind: str,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
    skip_nonfinite: bool = False,
    layer_stats_at: tuple[int, int] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """`train_step(state, batch)`; with `grad_accum_steps = k` the batch runs as k micro-batches.

    The objective transforms the whole batch first, so a micro-batched step sees exactly the
    inputs and targets of the full batch, and the gradient is that of the loss averaged over
    every scored token of the batch (sums over micro-batches, divided once at the end).

    Metric `state_finite` is 1 when every parameter, model state and optimizer state value after
    the step is finite. `skip_nonfinite`: a step whose loss or gradient norm is not finite, or
    whose new state is not, leaves parameters, model state and optimizer state as they were (a
    select on device, no host sync); the step count still advances, so data and RNG stay aligned
    with an uninterrupted run. Metric `skipped`.

    `layer_stats_at=(every, last)`: metric `layer_stats` holds train/observe/layer_stats.py's statistics
    at the steps that log (every `every`-th and the `last`), zeros at the others.
    """

    def scores_and_grads(params, model_state, model_batch):
        return _scores_and_grads(graphdef, objective, mask_kind, params, model_state, model_batch)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        model_batch = objective.transform(batch, jax.random.fold_in(state.rng, state.step))
        if grad_accum_steps == 1:
            scores, grads, model_state = scores_and_grads(state.params, state.model_state, model_batch)
        else:
            scores, grads, model_state = _accumulated(
                scores_and_grads, state.params, state.model_state, model_batch, grad_accum_steps
            )
        denom = jnp.maximum(scores["weight_sum"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": scores["nll_sum"] / denom,
            "accuracy": scores["correct_sum"] / denom,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(state.step),
            "predicted_tokens": scores["weight_sum"],
        }
        if layer_stats_at is not None:
            metrics["layer_stats"] = at_log_steps(
                state.params, grads, updates, state.step + 1, *layer_stats_at
            )
        # A finite loss and gradient can still give non-finite parameters (a huge learning rate):
        # the guard checks the state itself, so no non-finite state is kept or saved.
        metrics["state_finite"] = all_finite((params, model_state, opt_state)).astype(jnp.float32)
        if skip_nonfinite:
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            finite &= metrics["state_finite"] > 0
            params, model_state, opt_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old),
                (params, model_state, opt_state),
                (state.params, state.model_state, state.opt_state),
            )
            metrics["skipped"] = (~finite).astype(jnp.float32)
        new_state = dataclasses.replace(
            state, step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, objective: Objective, mask_kind: str):
    """`eval_step(params, model_state, model_batch) -> sums`; the batch is already transformed."""

    def eval_step(params: Any, model_state: Any, model_batch: Batch) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, params, model_state)
        model.eval()  # BatchNorm: running statistics instead of the batch's
        return objective.scores(model, model_batch, mask_kind)

    return eval_step
