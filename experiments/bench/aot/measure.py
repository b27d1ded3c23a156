"""What the command reports of a config on a target: one compile or the search for the largest
batch (experiments/bench/aot/batch_search.py), each as memory per device against its limit,
FLOPs and bytes, and a roofline step time."""

from __future__ import annotations

import sys
from typing import Any

from experiments.bench.aot.batch_search import largest_batch
from experiments.bench.aot.compile import Compiled, compile_step, with_batch
from experiments.bench.aot.targets import Target, compile_target
from train.devices.chips import GIB, Chip


def model_flops_per_device(config: Any, vocab_size: int, per_device: int, devices: int) -> float:
    """The model FLOPs of one step (train/observe/flops.py, what MFU counts) on each device."""
    from models import registry
    from train.loop import step as step_lib
    from train.objectives import make_objective
    from train.observe.flops import step_flops

    config = with_batch(config, per_device, devices)
    _, params = step_lib.abstract_model(registry.model_config(config, vocab_size))
    return step_flops(config, make_objective(config, vocab_size), params, vocab_size) / devices


def counted(c: Compiled) -> tuple[float, float]:
    """(FLOPs, bytes) of the compiled step per device: where the compiler gives counts (TPU),
    XLA's, plus the loop iterations it leaves out and the fused kernels, both by the program's
    own count (experiments/bench/aot/hlo_cost.py); else (GPU) the program's own estimate of the
    bytes and the kernels' FLOPs alone."""
    if c.xla_bytes:
        flops = c.xla_flops + c.repeats.flops + c.kernels.flops
        return flops, c.xla_bytes + c.repeats.bytes + c.kernels.bytes
    return c.kernels.flops, c.hlo_bytes


def roofline(c: Compiled, chip: Chip, model_flops: float, tokens: int) -> dict[str, Any]:
    """Step time if the chip ran at its peak: the FLOPs at the bf16 peak or the bytes at the HBM
    bandwidth (`counted`), whichever takes longer; the MFU and tokens/s that time bounds. The
    FLOPs are the counted ones, or the model's where fewer are counted: with the state sharded,
    the TPU compiler moves matmuls into asynchronous collective fusions, which XLA's cost
    analysis leaves out (their bytes too, so the bound is optimistic there), and the GPU
    compiler counts none."""
    flops, traffic = counted(c)
    compute = max(flops, model_flops) / chip.bf16_flops
    memory = traffic / chip.hbm_bandwidth
    seconds = max(compute, memory)
    return {
        "roofline_seconds": seconds,
        "bound_by": "compute" if compute >= memory else "memory",
        "mfu_bound": model_flops / (seconds * chip.bf16_flops) if seconds else 0.0,
        "tokens_per_sec_per_chip_bound": tokens / seconds if seconds else 0.0,
    }


def describe(config: Any, target: Target, vocab_size: int, c: Compiled) -> dict[str, Any]:
    """One compile as the JSON line reports it (per device; the memory limit is the target's,
    else the data sheet's HBM)."""
    out: dict[str, Any] = {
        "per_device_batch": c.per_device_batch,
        "fits": c.fits,
        "compile_seconds": round(c.compile_seconds, 2),
        "memory_per_chip": c.memory,
        "hbm_bytes": target.chip.hbm_bytes,
        "memory_limit_bytes": target.memory_limit or target.chip.hbm_bytes,
    }
    if not c.memory:
        return {**out, "error": c.error}
    model_flops = model_flops_per_device(config, vocab_size, c.per_device_batch, len(target.devices))
    flops, traffic = counted(c)
    return {
        **out,
        "xla_flops_per_chip": c.xla_flops,
        "xla_bytes_per_chip": c.xla_bytes,
        "kernel_calls": c.kernels.calls,
        "kernel_flops_per_chip": c.kernels.flops,
        "kernel_bytes_per_chip": c.kernels.bytes,
        "loop_repeat_flops_per_chip": c.repeats.flops,
        "loop_repeat_bytes_per_chip": c.repeats.bytes,
        "hlo_bytes_per_chip": c.hlo_bytes,
        "flops_per_chip": flops,
        "bytes_per_chip": traffic,
        "model_flops_per_chip": model_flops,
        **roofline(c, target.chip, model_flops, c.per_device_batch * config.seq_len),
        **({"largest_ops": c.largest_ops} if c.largest_ops else {}),
    }


def head(config: Any, target: Target, vocab_size: int) -> dict[str, Any]:
    from train.devices.mesh import mesh_shape

    data, fsdp = mesh_shape(config, len(target.devices))
    m = config.model
    return {
        "topology": target.name,
        "chip": target.chip.name,
        "chips": len(target.devices),
        "hosts": len({d.process_index for d in target.devices}),
        "mesh": {"data": data, "fsdp": fsdp},
        "objective": config.objective,
        "num_layers": m.num_layers,
        "d_model": m.d_model,
        "seq_len": config.seq_len,
        "vocab_size": vocab_size,
        "dtype": m.dtype,
        "remat": m.remat,
        "attention_impl": m.attention_impl,
        "loss_impl": m.loss_impl,
    }


def verdict(target: Target, c: Compiled) -> str:
    """One compile in words: whether it fits, and of how much."""
    limit = (target.memory_limit or target.chip.hbm_bytes) / GIB
    if not c.memory:
        return f"does not fit: the compiler refused it ({c.error})"
    word = "fits" if c.fits else "does not fit"
    return f"{word}: {c.memory['peak_bytes'] / GIB:.2f} of {limit:.2f} GiB per {target.chip.name}"


def measure(
    config: Any,
    topology: str,
    vocab_size: int,
    per_device: int,
    search: bool,
    hint: int | None = None,
    top_ops: int = 0,
) -> dict[str, Any]:
    """Everything the command prints for `config` on `topology` (experiments/bench/aot/__main__.py);
    the search for the largest batch starts from `per_device`, then `hint`; `top_ops`: the ops
    that move the most bytes, in each compile described."""
    target = compile_target(topology)
    per_device = per_device or max(config.batch_size // len(target.devices), 1)

    def compile_at(batch: int) -> Compiled:
        compiled = compile_step(config, target, vocab_size, batch, top_ops)
        print(
            f"[aot] {topology}: {batch} rows a device: {verdict(target, compiled)} "
            f"({compiled.compile_seconds:.0f} s to compile)",
            file=sys.stderr,
        )
        return compiled

    if not search:
        return {
            **head(config, target, vocab_size),
            **describe(config, target, vocab_size, compile_at(per_device)),
        }
    largest, tried = largest_batch(compile_at, target, start=per_device, hint=hint)
    return {
        **head(config, target, vocab_size),
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
        "at_start": describe(config, target, vocab_size, tried[per_device]),
        "at_largest": describe(config, target, vocab_size, tried[largest]) if largest else None,
    }
