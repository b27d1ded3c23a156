"""`train_and_evaluate(config, workdir)`: the training loop around the pure step.

Order of work: validate the config (before anything compiles), build data, mesh, model and
optimizer, resume from the workdir's latest complete checkpoint if there is one, compile the
step once, then loop: step, log, eval, checkpoint. A rerun of the same command in the same
workdir continues where the last complete checkpoint left off and ends in the same state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from train import step as step_lib
from train.checkpoint import Checkpointer
from train.config_checks import validate
from train.data.sources import make_source
from train.mesh import batch_sharding, make_mesh, replicated, to_global
from train.metrics import MetricsWriter, Progress, write_json_atomic
from train.objectives import MaskedLM, make_objective

log = logging.getLogger(__name__)

# The fixed MLM eval masking pattern is shared by every run, whatever its seed.
_EVAL_MASK_KEY = 0x5EED


def run_identity(config: Any, model_cfg) -> dict:
    """What a checkpoint must match to be resumed (or loaded) as this run."""
    return {
        "model": dataclasses.asdict(model_cfg),
        "objective": config.objective,
        "mask": config.mask,
        "dataset": config.dataset,
    }


def _rows_of_this_process(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = next(iter(batch.values())).shape[0] // jax.process_count()
    i = jax.process_index()
    return {k: v[i * n : (i + 1) * n] for k, v in batch.items()}


class Evaluator:
    """Fixed eval batches (MLM masks drawn once), their references, and the eval loop."""

    def __init__(self, source, objective, graphdef, mask_kind: str, sharding):
        eval_objective = objective.for_eval() if isinstance(objective, MaskedLM) else objective
        transform = jax.jit(eval_objective.transform)
        key = jax.random.PRNGKey(_EVAL_MASK_KEY)
        raw_batches = source.eval_batches()
        host_batches = [
            jax.device_get(transform(b, jax.random.fold_in(key, i))) for i, b in enumerate(raw_batches)
        ]
        self.reference = None
        if hasattr(source, "reference_losses"):
            raw = np.concatenate([b["tokens"] for b in raw_batches])
            scored = np.concatenate([np.asarray(eval_objective.scored_tokens(b)) for b in host_batches])
            self.reference = source.reference_losses(objective.name, raw, scored)
        self.batches = [to_global(_rows_of_this_process(b), sharding) for b in host_batches]
        self._step = jax.jit(step_lib.make_eval_step(graphdef, eval_objective, mask_kind))

    def __call__(self, params) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in self.batches:
            for k, v in jax.device_get(self._step(params, batch)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        n = max(totals["weight_sum"], 1.0)
        out = {
            "loss": totals["nll_sum"] / n,
            "accuracy": totals["correct_sum"] / n,
            "perplexity": float(np.exp(totals["nll_sum"] / n)),
            "predicted_tokens": totals["weight_sum"],
        }
        if self.reference:
            oracle, unigram = self.reference["oracle_loss"], self.reference["unigram_loss"]
            out.update(
                oracle_loss=oracle,
                unigram_loss=unigram,
                gap=out["loss"] / oracle - 1.0,
                captured=(unigram - out["loss"]) / (unigram - oracle),
            )
        return out


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the run described by `config` in `workdir`; returns `summary.json`."""
    validate(config)
    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    chief = jax.process_index() == 0

    source = make_source(config)
    mesh = make_mesh(config)
    model_cfg = step_lib.model_config(config, source.vocab_size)
    objective = make_objective(config, source.vocab_size)
    tx = step_lib.make_optimizer(config)
    graphdef, _ = step_lib.abstract_model(model_cfg)
    identity = run_identity(config, model_cfg)
    state_sharding = replicated(mesh)
    data_sharding = batch_sharding(mesh)

    init = jax.jit(lambda: step_lib.init_state(model_cfg, tx, config.seed), out_shardings=state_sharding)
    abstract_state = jax.eval_shape(init)
    abstract_state = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=state_sharding), abstract_state
    )
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(abstract_state.params))

    checkpointer = Checkpointer(workdir, config.keep_checkpoints)
    train_iter = source.train_iterator(jax.process_index(), jax.process_count())
    latest = checkpointer.latest_step()
    if latest is None:
        state = init()
    else:
        state, data_state = checkpointer.restore(latest, abstract_state, identity)
        train_iter.set_state(data_state)
        log.info("resumed from step %d in %s", latest, checkpointer.directory)
    start_step = int(state.step)

    if chief:
        write_json_atomic(
            os.path.join(workdir, "config.json"),
            {**config.to_dict(), "resolved": {"vocab_size": source.vocab_size, "num_params": num_params}},
        )
    writer = MetricsWriter(workdir, resume_step=start_step, enabled=chief)
    evaluator = Evaluator(source, objective, graphdef, config.mask, data_sharding)

    t_compile = time.perf_counter()
    train_step = jax.jit(
        step_lib.make_train_step(graphdef, tx, objective, config.mask, step_lib.make_schedule(config)),
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,),
    )
    first = next(train_iter)
    compiled_step = train_step.lower(state, to_global(first, data_sharding)).compile()
    compile_seconds = time.perf_counter() - t_compile
    log.info("%s params; train step compiled in %.1fs", f"{num_params:,}", compile_seconds)

    tokens_per_step = config.batch_size * config.seq_len
    progress = Progress(start_step, config.num_train_steps, tokens_per_step)
    window: list[dict[str, jax.Array]] = []
    eval_metrics: dict[str, float] = {}
    t_loop, steps_run = time.perf_counter(), 0
    batch = first
    for step in range(start_step + 1, config.num_train_steps + 1):
        state, metrics = compiled_step(state, to_global(batch, data_sharding))
        data_state = train_iter.get_state()  # the position after every batch used so far
        window.append(metrics)
        steps_run += 1
        last = step == config.num_train_steps
        if not last:
            batch = next(train_iter)  # overlaps host work with the async device step

        if step % config.log_every_steps == 0 or last:
            fetched = jax.device_get(window)
            row = {k: float(np.mean([m[k] for m in fetched])) for k in ("loss", "accuracy", "grad_norm")}
            row["learning_rate"] = float(fetched[-1]["learning_rate"])
            row["predicted_tokens"] = float(fetched[-1]["predicted_tokens"])
            window = []
            writer.write(step, "train", row)
            writer.scalars(step, "perf", progress.update(step, row))
        if step % config.eval_every_steps == 0 or last:
            eval_metrics = evaluator(state.params)
            writer.write(step, "eval", eval_metrics)
            progress.message(f"eval step {step}: " + json.dumps({k: round(v, 4) for k, v in eval_metrics.items()}))
        if step % config.checkpoint_every_steps == 0 or last:
            checkpointer.save(step, state, data_state, identity)

    train_seconds = time.perf_counter() - t_loop
    if not eval_metrics:  # the workdir already held the final step
        eval_metrics = evaluator(state.params)
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    summary = {
        "final_step": config.num_train_steps,
        "num_params": num_params,
        "eval": eval_metrics,
        "compile_seconds": compile_seconds,
        "wall_seconds": time.perf_counter() - t_start,
        "steps_this_session": steps_run,
        "train_tokens_per_sec": steps_run * tokens_per_step / max(train_seconds, 1e-9),
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
    }
    if chief:
        write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary
