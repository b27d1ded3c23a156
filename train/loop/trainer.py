"""`train_and_evaluate(config, workdir)`: the training loop around the pure step.

A run is a list of named steps: check the config (before anything compiles); build data, mesh,
model and optimizer (`build_run`); restore the newest intact checkpoint or initialise; compile
the step once and check its memory; run the loop (train/loop/loop.py: step, log, eval, and save
when `SavePolicy` says); write the summary. A rerun of the same command in the same workdir
continues where the last complete checkpoint left off and ends in the same state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import jax

from models.errors import ConfigError
from models.transformer_config import ATTENTION_PLATFORMS, TransformerConfig
from train.checkpoint.format import LoopState
from train.checkpoint.manager import Checkpointer
from train.checkpoint.preemption import PreemptionHandler
from train.checkpoint.workdir_lock import workdir_lock
from train.config_checks import validate
from train.devices.memory import check_fits, device_limit_bytes, step_memory
from train.devices.mesh import coordination_client, state_bytes, to_global
from train.hf import reader as hf_reader
from train.loop.build import Run, build_run
from train.loop.loop import Loop, LoopResult
from train.observe.metrics import write_json_atomic

log = logging.getLogger(__name__)


def train_and_evaluate(config: Any, workdir: str, command: str = "") -> dict[str, Any]:
    """Trains (or resumes) the run described by `config` in `workdir`; returns `summary.json`.
    `command`, the command line that launched it, is kept in `config.json` (model cards show it)."""
    validate(config)
    use_compilation_cache(config)
    platform = jax.devices()[0].platform
    impl = config.model.attention_impl
    if platform not in ATTENTION_PLATFORMS.get(impl, (platform,)):
        raise ConfigError(
            f"model.attention_impl={impl!r} runs on {' or '.join(ATTENTION_PLATFORMS[impl])}, and this run "
            f"is on {platform}; use model.attention_impl=auto"
        )
    t_start = time.perf_counter()
    chief = jax.process_index() == 0
    # In a multi-process run the processes agree on the step to stop at (preemption.py).
    preemption = PreemptionHandler(
        client=coordination_client(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    with new_workdir_removed_if_refused(workdir), workdir_lock(workdir, enabled=chief), preemption:
        with preemption.preparing("building the model and its data"):
            run = build_run(config, workdir)
        hf_dir = check_init_from(config, run)
        checkpointer = Checkpointer(workdir, config.keep_checkpoints)
        start = restore_or_initialise(run, checkpointer, hf_dir)
        if chief:
            write_config_record(config, workdir, run, command)
        compiled = compile_and_check_memory(run, start)
        loop = Loop(run, workdir, checkpointer, preemption, start.state, start.loop_state, chief)
        result = loop.run(compiled.step, start.first_batch, start.train_iter)
        return write_summary(run, workdir, chief, compiled, result, loop, platform, t_start)


@contextlib.contextmanager
def new_workdir_removed_if_refused(workdir: str) -> Iterator[None]:
    """Creates `workdir`; a run refused for its config or data (`ConfigError`) removes it again
    if this run created it and saved no checkpoint in it, so a mistake leaves no folder behind."""
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        yield
    except ConfigError:
        checkpoints = os.path.join(workdir, "checkpoints")
        saved = os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints))
        if created and not saved:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def use_compilation_cache(config: Any) -> None:
    """`compilation_cache_dir`: compiled programs persist across processes (small steps too)."""
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def check_init_from(config: Any, run: Run) -> str | None:
    """The Hugging Face directory of `init_from=hf:DIR`, checked against the model before
    anything compiles; None without `init_from`."""
    if not config.get("init_from"):
        return None
    hf_dir = hf_reader.directory(config.init_from)
    if not isinstance(run.model_config, TransformerConfig):
        raise ConfigError(f"init_from needs model.arch='transformer', not {config.model.arch!r}")
    problems = hf_reader.config_differences(hf_dir, run.model_config)
    if problems:
        raise ConfigError(problems)
    return hf_dir


@dataclasses.dataclass
class Start:
    """Where the loop starts: the state, the loop's position, and the data iterator with the
    first batch already drawn."""

    state: Any
    loop_state: LoopState
    train_iter: Any
    first_batch: dict


def restore_or_initialise(run: Run, checkpointer: Checkpointer, hf_dir: str | None) -> Start:
    """The newest intact checkpoint's state and positions, else a fresh state (from `hf_dir`'s
    weights when given)."""
    train_iter = run.source.train_iterator(jax.process_index(), jax.process_count())
    restored = checkpointer.restore_newest_intact(run.abstract_state, run.identity)
    if restored is not None:
        train_iter.set_state(restored.data)
        log.info("resumed from step %d in %s", restored.step, checkpointer.directory)
        return Start(restored.state, restored.loop_state, train_iter, next(train_iter))
    state = run.init_state()
    if hf_dir is not None:
        params = hf_reader.read_params(hf_dir, run.model_config)
        state = hf_reader.with_params(state, params, run.tx, run.state_sharding)
        log.info("initialised from %s", hf_dir)
    return Start(state, LoopState(), train_iter, next(train_iter))


def write_config_record(config: Any, workdir: str, run: Run, command: str) -> None:
    """`config.json`: the resolved config, the vocabulary size, parameter count and command. A
    record, never read back: where the workdir's differs from this command's config (an edit by
    hand, or other flags), a warning names each field, since the command's config is what runs."""
    path = os.path.join(workdir, "config.json")
    new = config.to_dict()
    if os.path.exists(path):
        recorded = _read_json(path)
        differing = record_differences(recorded, new) if recorded else []
        if differing:
            log.warning(
                "%s is a record of the run, not an input: this run uses the command's config, which "
                "differs from it in %s; it is rewritten to the command's config (pass --config.FIELD=VALUE "
                "to change a field)",
                path,
                "; ".join(differing),
            )
    resolved = {"vocab_size": run.vocab_size, "num_params": run.num_params, "command": command}
    write_json_atomic(path, {**new, "resolved": resolved})


def record_differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """`field: recorded -> current` for every leaf field that differs (`resolved` left out)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        if not prefix and key == "resolved":
            continue
        a, b = recorded.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += record_differences(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, list) and isinstance(b, tuple) and a == list(b)):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The compiled train step, its compile time and its memory per device."""

    step: Any  # the compiled `train_step`
    seconds: float
    memory: dict[str, int]  # per device: arguments, temporaries, peak (train/devices/memory.py)


def compile_and_check_memory(run: Run, start: Start) -> Compiled:
    """The train step compiled once for the first batch's shapes; stops with a `ConfigError`
    naming the batch and model fields when it does not fit the device's memory."""
    t = time.perf_counter()
    batch = to_global(start.first_batch, run.data_sharding)
    step = run.train_step.lower(start.state, batch).compile()
    seconds = time.perf_counter() - t
    memory = step_memory(step)
    peak_gib = memory.get("peak_bytes", 0) / 2**30
    log.info(
        "%s params; train step compiled in %.1fs; needs %.3f GiB per device",
        f"{run.num_params:,}",
        seconds,
        peak_gib,
    )
    check_fits(memory, device_limit_bytes())
    return Compiled(step, seconds, memory)


def write_summary(
    run: Run,
    workdir: str,
    chief: bool,
    compiled: Compiled,
    result: LoopResult,
    loop: Loop,
    platform: str,
    t_start: float,
) -> dict[str, Any]:
    """`summary.json` (and the writer's summary): final eval, compile and wall time, throughput."""
    config = run.config
    tokens_per_step = config.batch_size * config.seq_len
    total_bytes, device_bytes = state_bytes(loop.state)
    summary = {
        "final_step": config.num_train_steps,
        "num_params": run.num_params,
        "eval": result.eval_metrics,
        "compile_seconds": compiled.seconds,
        "wall_seconds": time.perf_counter() - t_start,
        "steps_this_session": result.steps_run,
        "train_tokens_per_sec": result.steps_run * tokens_per_step / max(result.train_seconds, 1e-9),
        "step_memory": compiled.memory,
        "devices": jax.device_count(),
        "mesh": dict(run.mesh.shape),
        "state_bytes": total_bytes,
        "state_bytes_per_device": device_bytes,
        "platform": platform,
        **loop.observer.summary(result.steps_run, result.train_seconds),
    }
    loop.writer.summary(summary)
    loop.close()
    if chief:
        write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary
