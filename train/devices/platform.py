"""Which platform runs the model, settled before JAX starts its backends.

`libtpu` comes with the test extra: it is what compiles the train step for TPU slices ahead of
time on a CPU host (experiments/bench/aot.py). Installed on a host that has no TPU, it makes JAX
try to start a TPU client at its first use; libtpu then prints its initialisation errors (no
accelerator type, no worker hostnames) before JAX falls back to the CPU, and the host-memory
setting (train/devices/host_memory.py) cannot tell that the model will run on the host.
`skip_absent_tpu()` settles it: with libtpu the only accelerator package and no TPU attached,
the run is on the CPU (`JAX_PLATFORMS=cpu`). Where `JAX_PLATFORMS` is set, a GPU plugin is
installed, or a TPU may be attached, JAX decides as it always does.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def gpu_plugin_installed() -> bool:
    """A PJRT plugin package (jax[cuda], jax[rocm]) registers itself under `jax_plugins`."""
    return any(importlib.metadata.entry_points(group="jax_plugins"))


def tpu_attached() -> bool:
    """Whether this host may have a TPU: JAX's own count of TPU chips on the PCI bus, or a TPU
    device file (/dev/accel* up to v4, /dev/vfio/N from v5). Unsure counts as attached."""
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    try:
        from jax._src import hardware_utils  # the list of TPU PCI ids JAX itself goes by
    except ImportError:
        return True
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def skip_absent_tpu() -> bool:
    """Sets `JAX_PLATFORMS=cpu` when libtpu is installed, no GPU plugin is, and no TPU is
    attached (see the module docstring); True if it did. Must run before JAX starts a backend."""
    if os.environ.get("JAX_PLATFORMS") or not libtpu_installed():
        return False
    if gpu_plugin_installed() or tpu_attached():
        return False
    os.environ["JAX_PLATFORMS"] = "cpu"
    try:  # JAX reads the variable when it is imported; a process that imported it already
        import jax

        jax.config.update("jax_platforms", "cpu")
    except ImportError:
        pass
    return True


def model_runs_on_host() -> bool:
    """Whether the model will run on this host's CPU: `JAX_PLATFORMS` names cpu first, or no
    accelerator package is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not (gpu_plugin_installed() or libtpu_installed())
