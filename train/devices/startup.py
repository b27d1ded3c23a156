"""What every entry point that runs a model does first, before JAX starts its backends."""

from __future__ import annotations

from train.devices.host_memory import retain_freed_memory
from train.devices.platform import skip_absent_accelerators


def before_jax_starts() -> bool:
    """Settles the platform (no TPU probe on a host without a TPU: train/devices/platform.py),
    then sets the host allocator for a model that runs on the CPU (train/devices/host_memory.py).
    Returns whether the allocator was set."""
    skip_absent_accelerators()
    return retain_freed_memory()
