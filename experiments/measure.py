"""In-process measurements for tables that need more than a training run.

- `init_attention_stats`: at initialisation, the attention entropy and max probability (claim
  C5: without the 1/sqrt(d_k) scale the softmax saturates as d_k grows) and the gradient norm
  of the query and key kernels.
- `step_timing`: seconds per train step and tokens/s over sequence lengths (claim C1: the
  Transformer trains all positions at once; the LSTM steps through them).
- `eval_at_15`: a trained masked LM scored at the standard 15% masking rate, whatever rate it
  was trained with, so the rows of the masking-rate table share one yardstick.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.masks import make_attention_mask
from train import step as step_lib
from train.data.sources import make_source
from train.objectives import make_objective


def _setup(config: Any, workdir: str):
    source = make_source(config, workdir)
    cfg = step_lib.model_config(config, source.vocab_size)
    return source, cfg, make_objective(config, source.vocab_size)


def init_attention_stats(config: Any, workdir: str) -> dict[str, float]:
    source, cfg, objective = _setup(config, workdir)
    model = step_lib.make_model(cfg, nnx.Rngs(params=jax.random.split(jax.random.PRNGKey(config.seed))[0]))
    batch = objective.transform(next(source.train_iterator()), jax.random.PRNGKey(0))
    mask = make_attention_mask(config.mask, batch["segment_ids"])
    maps = model.attention_maps(batch["inputs"], mask, batch["positions"])
    probs = jnp.stack(maps)  # [layers, B, N, L, L]
    entropy = -(probs * jnp.log(jnp.where(probs > 0, probs, 1.0))).sum(-1)
    graphdef, params, rest = step_lib.split_model(model)

    def loss(params):
        s = objective.scores(nnx.merge(graphdef, params, rest), batch, config.mask)
        return s["nll_sum"] / s["weight_sum"]

    grads = jax.grad(loss)(params)
    qk = [grads["blocks"][i]["attn"][p]["kernel"] for i in range(cfg.num_layers) for p in ("query", "key")]
    return {
        "init_entropy": float(entropy.mean()),
        "init_max_prob": float(probs.max(-1).mean()),
        "init_qk_grad_norm": float(jnp.sqrt(sum(jnp.sum(g**2) for g in qk))),
    }


def step_timing(config: Any, workdir: str, repeats: int = 5) -> dict[str, float]:
    """Median wall time of a compiled train step, after two warm-up steps."""
    source, cfg, objective = _setup(config, workdir)
    tx = step_lib.make_optimizer(config)
    graphdef, _ = step_lib.abstract_model(cfg)
    state = jax.jit(lambda: step_lib.init_state(cfg, tx, config.seed))()
    step = jax.jit(
        step_lib.make_train_step(graphdef, tx, objective, config.mask, step_lib.make_schedule(config)),
        donate_argnums=0,
    )
    batch = jax.device_put(next(source.train_iterator()))
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "step_seconds": median,
        "tokens_per_sec": config.batch_size * config.seq_len / median,
        "compile_seconds": compile_s,
        "num_params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(state.params))),
    }


def eval_at_15(config: Any, workdir: str) -> dict[str, float]:
    """The trained run's eval loss and `captured` with 15% of tokens masked (all [MASK])."""
    import dataclasses

    from train.evaluation import Evaluator
    from train.inference import load_trained

    trained = load_trained(workdir)
    source, _, objective = _setup(config, workdir)
    graphdef, params, rest = step_lib.split_model(trained.model)
    at_15 = dataclasses.replace(objective, rate=0.15)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    result = Evaluator(source, at_15, graphdef, config.mask, sharding)(params, rest)
    return {"eval15_loss": result["loss"], "eval15_captured": result["captured"]}
