"""Training, one package per concern (docs/layout.md).

Imported before any of its modules, so before any of them starts JAX, whatever the entry point
(a command, a notebook, a Python session): the platform is settled, quietly, on a host that has
the TPU and GPU compilers installed but neither accelerator (train/devices/platform.py).
"""

from train.devices.platform import skip_absent_accelerators

skip_absent_accelerators()
