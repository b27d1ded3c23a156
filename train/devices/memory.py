"""The train step's memory, known before the first step: ahead-of-time compile, then a check.

XLA's memory analysis of the compiled step gives the bytes one device needs for the step's
arguments (state and batch), outputs and temporaries; donation lets outputs reuse the donated
state. If the device reports a limit (GPU and TPU do; CPU does not) and the step needs more, the
run stops with an error naming the fields that trade memory for something else, instead of
failing with an allocator error minutes into compilation or the first step.
"""

from __future__ import annotations

from typing import Any

import jax

from models.errors import ConfigError

GIB = 2**30


def step_memory(compiled: Any) -> dict[str, int]:
    """Per-device bytes of a compiled step: arguments, outputs, temporaries and the peak estimate."""
    analysis = compiled.memory_analysis()
    if analysis is None:  # some backends do not report
        return {}
    out = {
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "alias_bytes": int(analysis.alias_size_in_bytes),  # outputs written into donated inputs
    }
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def device_limit_bytes(device: jax.Device | None = None) -> int | None:
    """What the device can hold, or None where it does not say (CPU)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory stats raise rather than return None
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def check_fits(memory: dict[str, int], limit: int | None) -> None:
    if not memory or limit is None or memory["peak_bytes"] <= limit:
        return
    raise ConfigError(
        f"the train step needs {memory['peak_bytes'] / GIB:.2f} GiB per device (state and batch "
        f"{memory['argument_bytes'] / GIB:.2f} GiB, temporaries {memory['temp_bytes'] / GIB:.2f} GiB) but "
        f"the device holds {limit / GIB:.2f} GiB; lower batch_size or raise grad_accum_steps, set "
        "model.remat=full (or dots), model.dtype=bfloat16, or shard the state with mesh.fsdp"
    )
