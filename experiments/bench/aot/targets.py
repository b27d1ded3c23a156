"""What a train step is compiled for on this host: the compile-only devices of a TPU slice
(libtpu) or of NVIDIA GPUs on one host (the CUDA plugin), and the memory each device gives it.

A target is written GENERATION:SHAPE for a TPU slice (`v4:2x2x1`, `v5e:2x2`, `v5e:4x4`, a slice
of several hosts too) and GPU or GPU:COUNT for GPUs on one host (`h100`, `h100:8`, `h200`,
`a100`). The GPU compiler takes a description of the device (its SM count, shared memory, HBM
size and bandwidth, clock, compute capability), which `gpu_target_config` writes from the data
sheet (train/devices/chips.py); no GPU, driver or CUDA library is needed to compile.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from models.errors import ConfigError
from train.devices.chips import CHIPS, GPU_SHEETS, TPU_KINDS, Chip, GpuSheet
from train.devices.platform import quiet_stderr

# JAX takes this fraction of a GPU's memory when it starts (XLA_PYTHON_CLIENT_MEM_FRACTION's
# default): what a step may use unless a run raises it. The TPU compiler says its own limit.
GPU_MEMORY_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class Target:
    """Compile-only devices and what each has: the chip's data sheet and the bytes a program
    may use (None: the compiler refuses what does not fit, as the TPU compiler does)."""

    name: str
    platform: str  # "tpu" or "gpu"
    chip: Chip
    devices: list[Any]
    memory_limit: float | None


def compile_target(name: str) -> Target:
    """The target named `name` (module docstring); a bad name is a `ConfigError` naming the flag."""
    kind = name.partition(":")[0]
    if kind in GPU_SHEETS:
        return _gpus(name)
    if kind in TPU_KINDS:
        return Target(name, "tpu", CHIPS[TPU_KINDS[kind]], tpu_devices(name), None)
    raise ConfigError(
        f"--topology {name!r}: use a TPU slice GENERATION:SHAPE with the generation one of "
        f"{sorted(TPU_KINDS)}, or a GPU ({'/'.join(sorted(GPU_SHEETS))}, optionally :COUNT)"
    )


def tpu_devices(topology: str) -> list[Any]:
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


def _gpus(name: str) -> Target:
    from jax.experimental import topologies

    kind, _, count = name.partition(":")
    if count and not (count.isdigit() and 1 <= int(count) <= 16):
        raise ConfigError(f"--topology {name!r}: the GPU count must be 1 to 16 (one host)")
    sheet = GPU_SHEETS[kind]
    chip = CHIPS[sheet.chip]
    with quiet_stderr():
        try:
            topology = topologies.get_topology_desc(
                platform="cuda", target_config=gpu_target_config(sheet, chip), topology=f"1x1x{count or 1}"
            )
        except Exception as e:  # no CUDA plugin, or one that cannot read the description
            raise ConfigError(
                f"--topology {name!r}: the GPU compiler is not available ({str(e).splitlines()[0]}); "
                "pip install -e '.[test]' (or '.[gpu-compile]') brings it"
            ) from e
    return Target(name, "gpu", chip, list(topology.devices), GPU_MEMORY_FRACTION * chip.hbm_bytes)


def gpu_target_config(sheet: GpuSheet, chip: Chip) -> str:
    """The GPU's description as the text proto XLA's GPU compiler reads (a GpuTargetConfig)."""
    major, minor = sheet.compute_capability
    info = {
        "threads_per_block_limit": 1024,
        "threads_per_warp": 32,
        "shared_memory_per_block": 48 * 1024,
        "shared_memory_per_core": sheet.shared_memory_per_sm,
        "threads_per_core_limit": 2048,
        "core_count": sheet.sms,
        "fpus_per_core": sheet.fp32_lanes_per_sm,
        "block_dim_limit_x": 2**31 - 1,
        "block_dim_limit_y": 65535,
        "block_dim_limit_z": 65535,
        "memory_bandwidth": int(chip.hbm_bandwidth),
        "l2_cache_size": sheet.l2_bytes,
        "clock_rate_ghz": sheet.boost_clock_ghz,
        "device_memory_size": int(chip.hbm_bytes),
        "shared_memory_per_block_optin": sheet.shared_memory_per_block_optin,
        "registers_per_core_limit": 65536,
        "registers_per_block_limit": 65536,
    }
    fields = "\n".join(f"  {k}: {v}" for k, v in info.items())
    return (
        f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
        f'platform_name: "CUDA"\ndevice_description_str: "{sheet.device_kind}"\n'
    )
