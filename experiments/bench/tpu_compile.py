"""Compiling a config's train step for a TPU slice that is not there: the slice's compile-only
devices (libtpu), the compile with its memory and cost analyses, and the roofline estimate.
experiments/bench/aot.py is the command around it; experiments/bench/batch_search.py chooses
the batches that a search for the largest one compiles."""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
import warnings
from typing import Any

from experiments.bench.batch_search import largest_batch
from models.errors import ConfigError
from train.devices.chips import CHIPS, GIB, TPU_KINDS, Chip
from train.devices.platform import quiet_stderr


def topology_devices(topology: str) -> list[Any]:
    """The compile-only devices of a TPU slice named GENERATION:SHAPE (v4 as megacore chips)."""
    from jax.experimental import topologies

    generation = topology.partition(":")[0]
    if generation not in TPU_KINDS:
        raise ConfigError(f"--topology {topology!r}: the generation must be one of {sorted(TPU_KINDS)}")
    options = {"chip_config_name": "megacore"} if generation == "v4" else {}
    # libtpu takes a machine-wide lock file for the chips it drives; compile-only devices open
    # none, and without this a second compiling process (a test beside the table) is refused.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    with quiet_stderr():
        try:
            return list(topologies.get_topology_desc(topology, "tpu", **options).devices)
        except Exception as e:
            raise ConfigError(f"--topology {topology!r}: {e}") from e


def with_batch(config: Any, per_device: int, devices: int) -> Any:
    """A copy of `config` whose global batch is `per_device` rows on each of `devices`."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.batch_size = per_device * devices
    return config


@dataclasses.dataclass
class Compiled:
    """One ahead-of-time compile: whether the step fits the chip, and what it needs."""

    per_device_batch: int
    fits: bool
    compile_seconds: float
    memory: dict[str, int]  # per chip, as train/devices/memory.py reads it; {} when it did not fit
    xla_flops: float  # per chip, XLA's cost analysis (every op, remat recomputation included)
    xla_bytes: float
    error: str = ""


def compile_step(config: Any, devices: list[Any], vocab_size: int, per_device: int) -> Compiled:
    """Compiles `config`'s train step with `per_device` rows on each of `devices`."""
    import jax
    import jax.numpy as jnp

    from train.devices.memory import step_memory
    from train.loop.build import build_run

    config = with_batch(config, per_device, len(devices))
    run = build_run(config, "", vocab_size=vocab_size, devices=devices)
    shape = (config.batch_size, config.seq_len)
    batch = {
        k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=run.data_sharding)
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
    cost = cost[0] if isinstance(cost, list) else cost
    return Compiled(per_device, True, seconds, memory, float(cost["flops"]), float(cost["bytes accessed"]))


def compile_uncached(lowered: Any) -> Any:
    """`lowered.compile()` kept out of the persistent compilation cache (when one is set): JAX
    would write the TPU program there like any other, but this host's CPU client cannot load it
    back, so a later compile of the same step reads the entry, warns and compiles again."""
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


def model_flops_per_device(config: Any, vocab_size: int, per_device: int, devices: int) -> float:
    """The model FLOPs of one step (train/observe/flops.py, what MFU counts) on each chip."""
    from models import registry
    from train.loop import step as step_lib
    from train.objectives import make_objective
    from train.observe.flops import step_flops

    config = with_batch(config, per_device, devices)
    _, params = step_lib.abstract_model(registry.model_config(config, vocab_size))
    return step_flops(config, make_objective(config, vocab_size), params, vocab_size) / devices


def roofline(compiled: Compiled, chip: Chip, model_flops: float, tokens: int) -> dict[str, Any]:
    """Step time if the chip ran at its peak: the FLOPs at the bf16 peak or XLA's bytes at the
    HBM bandwidth, whichever takes longer; the MFU and tokens/s that time bounds. The FLOPs are
    XLA's, or the model's where XLA counts fewer: with the state sharded, the TPU compiler moves
    matmuls into asynchronous collective fusions, which XLA's cost analysis leaves out (their
    bytes too, so the bound is optimistic there)."""
    compute = max(compiled.xla_flops, model_flops) / chip.bf16_flops
    memory = compiled.xla_bytes / chip.hbm_bandwidth
    seconds = max(compute, memory)
    return {
        "roofline_seconds": seconds,
        "bound_by": "compute" if compute >= memory else "memory",
        "mfu_bound": model_flops / (seconds * chip.bf16_flops) if seconds else 0.0,
        "tokens_per_sec_per_chip_bound": tokens / seconds if seconds else 0.0,
    }


def describe(config: Any, devices: list[Any], chip: Chip, vocab_size: int, c: Compiled) -> dict[str, Any]:
    """One compile as the JSON line reports it: memory per chip against HBM, FLOPs and bytes,
    the roofline estimate."""
    out: dict[str, Any] = {
        "per_device_batch": c.per_device_batch,
        "fits": c.fits,
        "compile_seconds": round(c.compile_seconds, 2),
        "memory_per_chip": c.memory,
        "hbm_bytes": chip.hbm_bytes,
    }
    if not c.fits:
        return {**out, "error": c.error}
    model_flops = model_flops_per_device(config, vocab_size, c.per_device_batch, len(devices))
    return {
        **out,
        "xla_flops_per_chip": c.xla_flops,
        "xla_bytes_per_chip": c.xla_bytes,
        "model_flops_per_chip": model_flops,
        **roofline(c, chip, model_flops, c.per_device_batch * config.seq_len),
    }


def measure(
    config: Any, topology: str, vocab_size: int, per_device: int, search: bool, hint: int | None = None
) -> dict[str, Any]:
    """Everything the command prints for `config` on `topology` (module docstring); the search
    for the largest batch starts from `per_device`, then `hint` (experiments/bench/batch_search.py)."""
    from train.devices.mesh import mesh_shape

    devices = topology_devices(topology)
    chip = CHIPS[TPU_KINDS[topology.partition(":")[0]]]
    per_device = per_device or max(config.batch_size // len(devices), 1)
    data, fsdp = mesh_shape(config, len(devices))
    head = {
        "topology": topology,
        "chip": chip.name,
        "chips": len(devices),
        "hosts": len({d.process_index for d in devices}),
        "mesh": {"data": data, "fsdp": fsdp},
        "objective": config.objective,
        "num_layers": config.model.num_layers,
        "d_model": config.model.d_model,
        "seq_len": config.seq_len,
        "vocab_size": vocab_size,
        "dtype": config.model.dtype,
        "remat": config.model.remat,
    }

    def compile_at(batch: int) -> Compiled:
        compiled = compile_step(config, devices, vocab_size, batch)
        fits = f"{compiled.memory['peak_bytes'] / GIB:.2f} GiB" if compiled.fits else "does not fit"
        print(
            f"[aot] {topology}: {batch} rows per chip: {fits} ({compiled.compile_seconds:.0f} s)",
            file=sys.stderr,
        )
        return compiled

    if not search:
        return {**head, **describe(config, devices, chip, vocab_size, compile_at(per_device))}
    largest, tried = largest_batch(compile_at, chip, start=per_device, hint=hint)
    return {
        **head,
        "largest_per_device_batch": largest,
        "search": [
            {
                "per_device_batch": b,
                "fits": c.fits,
                "peak_bytes": c.memory.get("peak_bytes"),
                "compile_seconds": round(c.compile_seconds, 2),
            }
            for b, c in sorted(tried.items())
        ],
        "at_start": describe(config, devices, chip, vocab_size, tried[per_device]),
        "at_largest": describe(config, devices, chip, vocab_size, tried[largest]) if largest else None,
    }
