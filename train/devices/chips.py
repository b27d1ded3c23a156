"""Accelerator chips from their data sheets: dense bf16 peak, HBM capacity and bandwidth.

MFU on an accelerator is measured against `bf16_flops` (train/observe/flops.py), and the ahead-of-
time compile (experiments/bench/aot/) sets a compiled step's memory against `hbm_bytes` and
its FLOPs and bytes against both rates for a roofline estimate. Keyed by JAX's
`Device.device_kind`: v5p chips call themselves "TPU v5", v5e "TPU v5 lite", v6e "TPU v6 lite".
Figures: Google Cloud's TPU system-architecture pages (per chip) and NVIDIA's data sheets (SXM).
"""

from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip as its data sheet gives it."""

    name: str  # as the tables print it
    bf16_flops: float  # dense bf16 peak, FLOP/s
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s


CHIPS: dict[str, Chip] = {
    "TPU v4": Chip("v4", 275e12, 32 * GIB, 1228e9),
    "TPU v5 lite": Chip("v5e", 197e12, 16 * GIB, 819e9),
    "TPU v5": Chip("v5p", 459e12, 95 * GIB, 2765e9),
    "TPU v6 lite": Chip("v6e", 918e12, 32 * GIB, 1640e9),
    "H200": Chip("H200", 989e12, 141e9, 4.8e12),
    "H100": Chip("H100", 989e12, 80e9, 3.35e12),
    "A100": Chip("A100", 312e12, 80e9, 2.039e12),
    "L4": Chip("L4", 121e12, 24e9, 300e9),
}


@dataclasses.dataclass(frozen=True)
class GpuSheet:
    """What XLA's GPU compiler needs to know of an NVIDIA GPU it compiles for without one (the
    target description experiments/bench/aot/targets.py writes), from the data sheet."""

    chip: str  # the key of its `CHIPS` entry
    device_kind: str  # as JAX's `Device.device_kind` names it
    sms: int
    boost_clock_ghz: float
    compute_capability: tuple[int, int]
    fp32_lanes_per_sm: int
    l2_bytes: int
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int


# NVIDIA's data sheets (SXM parts) and CUDA's programming guide (shared memory by compute
# capability), by the names a target is written with (`h100`, `h100:8`).
GPU_SHEETS = {
    "h100": GpuSheet(
        "H100", "NVIDIA H100 80GB HBM3", 132, 1.98, (9, 0), 128, 50 * 2**20, 228 * 1024, 227 * 1024
    ),
    "h200": GpuSheet("H200", "NVIDIA H200", 132, 1.98, (9, 0), 128, 50 * 2**20, 228 * 1024, 227 * 1024),
    "a100": GpuSheet(
        "A100", "NVIDIA A100-SXM4-80GB", 108, 1.41, (8, 0), 64, 40 * 2**20, 164 * 1024, 163 * 1024
    ),
}

# The TPU generations by the names a topology is written with (`v5e:2x2`), as JAX spells them.
TPU_KINDS = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5", "v6e": "TPU v6 lite"}


def chip_of(device_kind: str) -> Chip | None:
    """The chip of a `device_kind`: its own entry, else the longest key it contains (GPUs name
    themselves "NVIDIA H100 80GB HBM3"), else None."""
    if device_kind in CHIPS:
        return CHIPS[device_kind]
    kind = device_kind.lower()
    matches = [key for key in CHIPS if key.lower() in kind]
    return CHIPS[max(matches, key=len)] if matches else None
