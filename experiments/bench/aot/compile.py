"""A config's train step compiled for a target that is not there (experiments/bench/aot/targets.py),
with what the compiled program says of itself: its memory, XLA's FLOPs and bytes where the
compiler gives them (TPU; the GPU compiler gives none), and the fused kernels', the loops' and
the program's own counts read from its HLO (experiments/bench/aot/hlo_cost.py)."""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from typing import Any

from experiments.bench.aot import hlo, hlo_cost
from experiments.bench.aot.targets import Target


def with_batch(config: Any, per_device: int, devices: int) -> Any:
    """A copy of `config` whose global batch is `per_device` rows on each of `devices`."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.batch_size = per_device * devices
    return config


@dataclasses.dataclass
class Compiled:
    """One ahead-of-time compile: whether the step fits the device, and what it needs."""

    per_device_batch: int
    fits: bool
    compile_seconds: float
    memory: dict[str, int]  # per device, as train/devices/memory.py reads it; {} when refused
    xla_flops: float  # per device, XLA's cost analysis (0 where the compiler gives none: GPU)
    xla_bytes: float
    error: str = ""
    # Read from the compiled HLO (experiments/bench/aot/hlo_cost.py), per device.
    kernels: hlo_cost.KernelCount = dataclasses.field(default_factory=hlo_cost.KernelCount)
    repeats: hlo_cost.Repeats = dataclasses.field(default_factory=hlo_cost.Repeats)  # XLA's loop gap
    hlo_bytes: float = 0.0  # every kernel's operands and results, fused kernels by formula
    largest_ops: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # where bytes go


def compile_step(config: Any, target: Target, vocab_size: int, per_device: int, top_ops: int = 0) -> Compiled:
    """Compiles `config`'s train step with `per_device` rows on each of the target's devices.
    It fits when the compiler accepts it (the TPU compiler refuses what its HBM cannot hold)
    and its memory is within the target's limit where the target sets one (GPU); `top_ops`:
    also the ops that move the most bytes."""
    import jax
    import jax.numpy as jnp

    from train.devices.memory import step_memory
    from train.loop.build import build_run

    config = with_batch(config, per_device, len(target.devices))
    run = build_run(config, "", vocab_size=vocab_size, devices=target.devices)
    batch = {
        k: jax.ShapeDtypeStruct((config.batch_size, config.seq_len), jnp.int32, sharding=run.data_sharding)
        for k in ("tokens", "segment_ids", "positions")
    }
    t0 = time.perf_counter()
    try:
        compiled = compile_uncached(run.train_step.lower(run.abstract_state, batch))
    except Exception as e:  # the TPU compiler refuses a program larger than the chip's memory
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return Compiled(per_device, False, time.perf_counter() - t0, {}, 0.0, 0.0, str(e).splitlines()[0])
    seconds = time.perf_counter() - t0
    memory = step_memory(compiled)
    memory["generated_code_bytes"] = int(compiled.memory_analysis().generated_code_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    module = hlo.parse(compiled.as_text())
    kernels = hlo_cost.kernel_count(module)
    fits = target.memory_limit is None or memory["peak_bytes"] <= target.memory_limit
    error = "" if fits else f"needs {memory['peak_bytes']} bytes, over the limit of {target.memory_limit:.0f}"
    return Compiled(
        per_device,
        fits,
        seconds,
        memory,
        float(cost.get("flops", 0.0)),
        float(cost.get("bytes accessed", 0.0)),
        error,
        kernels,
        hlo_cost.loop_repeats(module),
        hlo_cost.io_bytes(module) + kernels.bytes,
        hlo_cost.largest_ops(module, top_ops) if top_ops else [],
    )


def compile_uncached(lowered: Any) -> Any:
    """`lowered.compile()` kept out of the persistent compilation cache (when one is set): JAX
    would write the program there like any other, but this host's CPU client cannot load a TPU
    or GPU program back, so a later compile of the same step reads the entry, warns and
    compiles again."""
    import jax

    key = "jax_persistent_cache_min_compile_time_secs"
    saved = getattr(jax.config, key)
    jax.config.update(key, float("inf"))  # no compile takes long enough to be written
    try:
        with warnings.catch_warnings():
            # Entries that earlier versions wrote are still read, and can never load here.
            warnings.filterwarnings("ignore", "Error reading persistent compilation cache entry")
            return lowered.compile()
    finally:
        jax.config.update(key, saved)
