"""Host memory on CPU runs: keep freed buffers in the process instead of handing them back.

XLA:CPU allocates every execution's temporary buffer (hundreds of MB for a training step) with
malloc, from its executor threads. glibc serves an allocation that large from a fresh `mmap`
(a thread's arena cannot hold it) and unmaps it again on free, so every step page-faults and
zero-fills its whole working set anew. Measured on this repository's 2-core machine: a jitted
MLP forward + backward with a 432 MB temporary buffer took 137k minor page faults and 230 ms of
system time per step (453 ms a step); with the settings below, 0 faults and 303 ms a step.
The GPT benchmark step (README "Performance", learned positions) goes from 759 to 531 ms.

`retain_freed_memory()` sets glibc's allocator to one arena (the main heap, which grows
without bound), no `mmap`, no trimming: after the first step the same pages are reused. The
cost is that the process keeps its peak heap. It has to run before JAX starts its CPU client
(the executor threads pick their arena when they first allocate), so every entry point that
runs a model (train.main, experiments.bench, bench.attention, ablate, compare, tools.classify,
tools.sample) calls it first thing, through train/devices/startup.py; bench.input, which runs
none, does not. It does nothing where the host does not run the model (an accelerator plugin is
installed and may be used, or `JAX_PLATFORMS` names another platform: train/devices/platform.py),
off glibc, or when `GPTBERT_HOST_MALLOC=default` is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

from train.devices.platform import model_runs_on_host

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
OPT_OUT_ENV = "GPTBERT_HOST_MALLOC"
_applied = False


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def retain_freed_memory() -> bool:
    """Sets glibc's malloc to reuse freed memory (see the module docstring); True if it did."""
    global _applied
    if _applied:
        return True
    if os.environ.get(OPT_OUT_ENV, "") == "default" or not sys.platform.startswith("linux"):
        return False
    if not model_runs_on_host():
        return False
    if _backend_started():
        log.warning(
            "retain_freed_memory() called after JAX started its backend: its threads keep "
            "their allocator arenas, so every step still page-faults. Call it first thing."
        )
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no such mallopt parameters)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # -1 as a size is SIZE_MAX: never give the top of the heap back.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    _applied = all(mallopt(param, value) == 1 for param, value in settings)
    return _applied
