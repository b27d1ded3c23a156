"""`train_and_evaluate(config, workdir)`: the training loop around the pure step.

Order of work: validate the config (before anything compiles), build data, mesh, model and
optimizer, resume from the workdir's latest complete checkpoint if there is one, compile the
step once, then loop: step, log, eval, checkpoint. A rerun of the same command in the same
workdir continues where the last complete checkpoint left off and ends in the same state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from models.errors import ConfigError
from models.transformer_config import TransformerConfig
from train import hf_import
from train.checkpoint import Checkpointer
from train.config_checks import validate
from train.device_memory import check_fits, device_limit_bytes, step_memory
from train.evaluator import Evaluator
from train.fingerprint import fingerprint, mismatches
from train.mesh import coordination_client, state_bytes, to_global
from train.metrics import MetricsWriter, write_json_atomic
from train.nonfinite import NonFiniteError, NonFiniteWatch, failure_message
from train.observe import Observer
from train.preemption import Preempted, PreemptionHandler
from train.setup import build_run
from train.wandb_log import WandbLogger
from train.workdir_lock import workdir_lock

log = logging.getLogger(__name__)


def train_and_evaluate(config: Any, workdir: str, command: str = "") -> dict[str, Any]:
    """Trains (or resumes) the run described by `config` in `workdir`; returns `summary.json`.
    `command`, the command line that launched it, is kept in `config.json` (model cards show it)."""
    validate(config)
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small steps too
    platform = jax.devices()[0].platform
    if config.model.attention_impl == "cudnn" and platform != "gpu":
        raise ConfigError(f"model.attention_impl='cudnn' needs a GPU, and this run is on {platform}")
    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    chief = jax.process_index() == 0
    # In a multi-process run the processes agree on the step to stop at (train/preemption.py).
    preemption = PreemptionHandler(
        client=coordination_client(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    with workdir_lock(workdir, enabled=chief), preemption:  # before anything is built or written
        return _train(config, workdir, platform, t_start, chief, preemption, command)


def verify_fingerprint(state: Any, progress: dict) -> str | None:
    """None if every restored array has the checksum it was saved with (train/fingerprint.py)."""
    if "fingerprint" not in progress:  # written before fingerprints existed: nothing to check
        return None
    bad = mismatches(progress["fingerprint"], fingerprint(state))
    return f"{len(bad)} arrays differ from their saved checksums ({', '.join(bad[:3])} ...)" if bad else None


def _train(
    config: Any,
    workdir: str,
    platform: str,
    t_start: float,
    chief: bool,
    preemption: PreemptionHandler,
    command: str,
) -> dict[str, Any]:
    run = build_run(config, workdir)
    source, mesh, data_sharding, identity = run.source, run.mesh, run.data_sharding, run.identity
    num_params = run.num_params

    if config.get("init_from"):  # checked before anything compiles
        hf_dir = hf_import.directory(config.init_from)
        if not isinstance(run.model_config, TransformerConfig):
            raise ConfigError(f"init_from needs model.arch='transformer', not {config.model.arch!r}")
        problems = hf_import.mismatches(hf_dir, run.model_config)
        if problems:
            raise ConfigError(problems)
    checkpointer = Checkpointer(workdir, config.keep_checkpoints)
    train_iter = source.train_iterator(jax.process_index(), jax.process_count())
    progress: dict = {}
    intact = checkpointer.restore_newest_intact(run.abstract_state, identity, verify_fingerprint)
    if intact is None:
        state = run.init_state()
        if config.get("init_from"):
            params = hf_import.read_params(hf_dir, run.model_config)
            state = hf_import.with_params(state, params, run.tx, run.state_sharding)
            log.info("initialised from %s", hf_dir)
    else:
        latest, state, data_state, progress = intact
        train_iter.set_state(data_state)
        log.info("resumed from step %d in %s", latest, checkpointer.directory)
    start_step = int(state.step)
    total_bytes, device_bytes = state_bytes(state)

    if chief:
        write_json_atomic(
            os.path.join(workdir, "config.json"),
            {
                **config.to_dict(),
                "resolved": {"vocab_size": source.vocab_size, "num_params": num_params, "command": command},
            },
        )
    wandb = WandbLogger(config, workdir) if chief and config.wandb.project else None
    writer = MetricsWriter(workdir, resume_step=start_step, enabled=chief, wandb=wandb)
    evaluator = Evaluator(source, run.objective, run.graphdef, config.mask, data_sharding)

    t_compile = time.perf_counter()
    first = next(train_iter)
    compiled_step = run.train_step.lower(state, to_global(first, data_sharding)).compile()
    compile_seconds = time.perf_counter() - t_compile
    memory = step_memory(compiled_step)
    log.info(
        "%s params; train step compiled in %.1fs; needs %.3f GiB per device",
        f"{num_params:,}",
        compile_seconds,
        memory.get("peak_bytes", 0) / 2**30,
    )
    check_fits(memory, device_limit_bytes())

    tokens_per_step = config.batch_size * config.seq_len
    observer = Observer(config, workdir, run, state.params, start_step, writer)
    progress_bar = observer.progress
    # A checkpoint taken between log steps (preemption) carries its window's metrics.
    window: list[dict] = [{k: np.float32(v) for k, v in m.items()} for m in progress.get("window", [])]
    watch, unchecked = NonFiniteWatch(config.nonfinite, config.max_skipped_in_a_row), []
    watch.skipped_in_a_row = progress.get("skipped_in_a_row", 0)

    def stop_if_nonfinite() -> None:
        nonlocal unchecked
        problem = watch.check(jax.device_get(unchecked))
        unchecked = []
        if problem:  # stop before this window is logged, evaluated or checkpointed
            close()  # every checkpoint in flight is of finite parameters
            raise NonFiniteError(failure_message(problem, checkpointer.latest_step(), checkpointer.directory))

    def save(step: int) -> None:
        window_now = [{k: float(v) for k, v in m.items()} for m in jax.device_get(window)]
        checkpointer.save(
            step,
            state,
            data_state,
            identity,
            {
                "window": window_now,
                "skipped_in_a_row": watch.skipped_in_a_row,
                "fingerprint": fingerprint(state),
            },
        )

    def close() -> None:
        observer.close()
        checkpointer.wait()
        checkpointer.close()
        writer.close()

    eval_metrics: dict[str, float] = {}
    t_loop, steps_run = time.perf_counter(), 0
    last_save = time.monotonic()

    def minutes_due() -> bool:
        """`checkpoint_every_minutes` elapsed, by the chief's clock: every process saves the same
        step. Asked at log steps only, where the host syncs anyway, so the window is empty."""
        due = time.monotonic() - last_save >= 60 * config.checkpoint_every_minutes
        if jax.process_count() > 1:
            due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
        return due

    batch = first
    preemption.start(start_step)
    for step in range(start_step + 1, config.num_train_steps + 1):
        observer.before_step(step)
        state, metrics = compiled_step(state, to_global(batch, data_sharding))
        metrics = observer.after_step(step, state, metrics)
        data_state = train_iter.get_state()  # the position after every batch used so far
        window.append(metrics)
        unchecked.append((step, metrics))
        steps_run += 1
        last = step == config.num_train_steps
        if not last:
            batch = next(train_iter)  # overlaps host work with the async device step

        log_now = step % config.log_every_steps == 0 or last
        eval_now = step % config.eval_every_steps == 0 or last
        if log_now or eval_now:  # the host reads metrics here anyway: no extra sync per step
            stop_if_nonfinite()
        if log_now:
            fetched = jax.device_get(window)
            row = {k: float(np.mean([m[k] for m in fetched])) for k in ("loss", "accuracy", "grad_norm")}
            row["learning_rate"] = float(fetched[-1]["learning_rate"])
            # Mean per step over the window: times log_every_steps it is the exact count.
            row["predicted_tokens"] = float(np.mean([m["predicted_tokens"] for m in fetched]))
            if config.nonfinite == "skip":
                row["skipped_steps"] = float(sum(m["skipped"] for m in fetched))
            window = []
            writer.write(step, "train", row)
            observer.at_log(step, row)
        if eval_now:
            eval_metrics = evaluator(state.params, state.model_state)
            writer.write(step, "eval", eval_metrics)
            observer.at_eval(step, state.params, state.model_state)
            rounded = {k: round(v, 4) for k, v in eval_metrics.items()}
            progress_bar.message(f"eval step {step}: {json.dumps(rounded)}")
        saved = step % config.checkpoint_every_steps == 0 or last
        saved = saved or (config.checkpoint_every_minutes > 0 and log_now and minutes_due())
        if saved:
            save(step)
            last_save = time.monotonic()
        signum = preemption.stop_at(step)
        if signum is not None and not last:
            if not saved:
                stop_if_nonfinite()
                save(step)
            close()  # waits until the checkpoint is committed
            raise Preempted(signum, step, checkpointer.directory)

    train_seconds = time.perf_counter() - t_loop
    if not eval_metrics:  # the workdir already held the final step
        eval_metrics = evaluator(state.params, state.model_state)
    summary = {
        "final_step": config.num_train_steps,
        "num_params": num_params,
        "eval": eval_metrics,
        "compile_seconds": compile_seconds,
        "wall_seconds": time.perf_counter() - t_start,
        "steps_this_session": steps_run,
        "train_tokens_per_sec": steps_run * tokens_per_step / max(train_seconds, 1e-9),
        "step_memory": memory,
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "state_bytes": total_bytes,
        "state_bytes_per_device": device_bytes,
        "platform": platform,
        **observer.summary(steps_run, train_seconds),
    }
    writer.summary(summary)
    close()
    if chief:
        write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary
