"""Device mesh and shardings: data parallelism over a `data` axis, on one host or many.

Params and optimizer state are replicated; batches are split along their leading axis. Each
process passes only its own rows, and `to_global` assembles the global array.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from train.config_checks import ConfigError, check_batch_divides


def make_mesh(config: Any) -> Mesh:
    n = jax.device_count()
    data = config.mesh.data if config.mesh.data > 0 else n
    if data != n:
        raise ConfigError(f"mesh.data={config.mesh.data} but {n} devices are visible; use -1 for all")
    check_batch_divides(config.batch_size, data, jax.process_count())
    return jax.make_mesh((data,), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the `data` axis."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
    }
