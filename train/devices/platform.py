"""Which platform runs the model, settled before JAX starts its backends.

The test extra installs two accelerator compilers that a CPU host uses without the accelerator:
`libtpu` compiles the train step for TPU slices ahead of time, and the CUDA plugin compiles it
for GPUs (experiments/bench/aot/). Installed on a host that has neither, they make JAX try to
start a TPU client and a CUDA client at its first use; each prints its initialisation errors
(no accelerator type, no worker hostnames; no CUDA libraries) before JAX falls back to the CPU,
and the host-memory setting (train/devices/host_memory.py) cannot tell that the model will run
on the host. `skip_absent_accelerators()` settles it: with no TPU and no GPU attached, the run
is on the CPU (`JAX_PLATFORMS=cpu`). Where `JAX_PLATFORMS` is set, or an accelerator whose
package is installed may be attached, JAX decides as it always does.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def gpu_plugin_installed() -> bool:
    """A PJRT plugin package (jax[cuda], jax[rocm]) registers itself under `jax_plugins`."""
    return any(importlib.metadata.entry_points(group="jax_plugins"))


def gpu_attached() -> bool:
    """Whether this host has a GPU a plugin could drive: an NVIDIA device file (/dev/nvidiaN)
    or AMD's compute interface (/dev/kfd)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


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


def skip_absent_accelerators() -> bool:
    """Sets `JAX_PLATFORMS=cpu` when an accelerator package is installed, no accelerator it
    drives is attached and the variable is not set (see the module docstring); True if it did.
    Must run before JAX starts a backend."""
    tpu, gpu = libtpu_installed(), gpu_plugin_installed()
    gpu_absent = gpu and not gpu_attached()
    # The CUDA plugin's libraries log "Could not find cuda drivers" from C++ as they load, once
    # each, whatever JAX_PLATFORMS says: when JAX is imported (here, or by `tpu_attached`) and
    # when it registers the plugin. On a host without a GPU both happen here, quietly.
    with quiet_stderr() if gpu_absent else contextlib.nullcontext():
        to_cpu = not os.environ.get("JAX_PLATFORMS") and (tpu or gpu_absent)
        to_cpu = to_cpu and not (gpu and not gpu_absent) and not (tpu and tpu_attached())
        if to_cpu:
            os.environ["JAX_PLATFORMS"] = "cpu"
        if to_cpu or gpu_absent:
            _settle_jax(to_cpu, register_plugins=gpu_absent)
    return to_cpu


def _settle_jax(to_cpu: bool, register_plugins: bool) -> None:
    """JAX imported, told the CPU platform if `to_cpu` (it reads the variable when imported; a
    process may have imported it already), and the plugins registered now if asked: registering
    creates no client, so a multi-process run still joins (`jax.distributed`) first. JAX keeps
    that step in a private module (no public call registers plugins without starting backends)."""
    try:
        import jax
        from jax._src import xla_bridge
    except ImportError:
        return
    if to_cpu:
        jax.config.update("jax_platforms", "cpu")
    if register_plugins:
        xla_bridge._discover_and_register_pjrt_plugins()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent nowhere: the accelerator runtimes print initialisation errors for
    hardware this host does not have, which say nothing about a compile for it (their own errors
    are raised)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def model_runs_on_host() -> bool:
    """Whether the model will run on this host's CPU: `JAX_PLATFORMS` names cpu first, or no
    accelerator package is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not (gpu_plugin_installed() or libtpu_installed())
