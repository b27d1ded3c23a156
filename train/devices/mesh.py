"""Device mesh and shardings: data parallelism and FSDP over a (`data`, `fsdp`) mesh.

Batches are split along their leading axis over both axes (every device gets its own rows).
Parameters and optimizer state are sharded over `fsdp` (each large array along its largest
dimension when the axis size divides it; the others are replicated), so with `mesh.fsdp = n`
each device holds about 1/n of the state and XLA all-gathers a layer's weights when it needs
them. `mesh.fsdp = 1` is plain data parallelism. Each process passes only its own rows, and
`to_global` assembles the global array.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from models.errors import ConfigError

# Arrays smaller than this stay replicated: sharding them saves nothing and costs a collective.
MIN_SHARDED_SIZE = 1024


def mesh_shape(config: Any, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes for `num_devices`; `mesh.data = -1` takes what `mesh.fsdp` leaves."""
    fsdp = config.mesh.fsdp
    if fsdp < 1 or num_devices % fsdp:
        raise ConfigError(f"mesh.fsdp={fsdp} must be a positive divisor of the {num_devices} devices")
    data = config.mesh.data if config.mesh.data > 0 else num_devices // fsdp
    if data * fsdp != num_devices:
        raise ConfigError(
            f"mesh.data={config.mesh.data} x mesh.fsdp={fsdp} must equal the {num_devices} visible "
            "devices; use mesh.data=-1 to take all the devices mesh.fsdp leaves"
        )
    return data, fsdp


def coordination_client() -> Any:
    """The key-value client of `jax.distributed` (None in a single-process run). JAX keeps it
    in a private module, where Orbax reads it too; there is no public accessor yet."""
    from jax._src import distributed

    return distributed.global_state.client


def initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1, auto: bool = False
) -> None:
    """Joins a multi-process run (one process per host, or several on one machine).

    With an address, count and id the processes meet at the coordinator; with `auto`, JAX
    detects them from the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes). On CPU the
    collectives go through gloo. Must run before anything touches a JAX device.
    """
    if not (coordinator_address or auto):
        return
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )


def make_mesh(config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (`data`, `fsdp`) mesh over `devices`: every device of the run by default, or the
    compile-only devices of a TPU topology (experiments/bench/aot.py compiles for those)."""
    devices = list(jax.devices() if devices is None else devices)
    processes = len({d.process_index for d in devices})
    data, fsdp = mesh_shape(config, len(devices))
    if config.batch_size % (data * fsdp) or config.batch_size % processes:
        raise ConfigError(
            f"batch_size={config.batch_size} must be divisible by the {data * fsdp} data-parallel "
            f"devices and the {processes} processes; change batch_size or mesh.data / mesh.fsdp"
        )
    return jax.make_mesh(
        (data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shards the largest dimension over the `fsdp` axis if the axis divides it; else the array
    stays whole. Not a smaller dimension instead: GPT-2's embedding (50257 x 768) split along
    its 768 features makes XLA contract the vocabulary logits over a split dimension, so every
    device holds partial logits of the whole batch (the `tiny` GPT with two layers compiled for
    a v5e 4x4 slice, fsdp 16, 4 rows per chip: 3.13 GiB per chip, against 0.11 GiB with the
    embedding whole and 0.11 GiB with the state replicated)."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
        return P()
    dim = max(range(len(shape)), key=lambda d: shape[d])
    if shape[dim] % fsdp:
        return P()
    return P(*[("fsdp" if d == dim else None) for d in range(len(shape))])


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
    """A NamedSharding per leaf of the train state (params, optimizer moments, step, rng)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda a: NamedSharding(mesh, param_spec(a.shape, fsdp)), abstract_state)


def traced_in(mesh: Mesh | None, fn: Callable) -> Callable:
    """`fn`, traced with `mesh` as the abstract mesh: a fused attention kernel reads it to run on
    each device's own rows (models/fused_attention.py) instead of on gathered ones. No mesh (one
    device, a `SingleDeviceSharding`): `fn` as it is."""
    if mesh is None:
        return fn

    @functools.wraps(fn)
    def in_mesh(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return in_mesh


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp")))


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the batch axes."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
    }


def state_bytes(state: Any) -> tuple[int, int]:
    """(bytes of the whole state, bytes the first device holds): what FSDP divides."""
    leaves = jax.tree.leaves(state)
    total = sum(int(x.nbytes) for x in leaves)
    first = jax.local_devices()[0]
    on_first = sum(int(s.data.nbytes) for x in leaves for s in x.addressable_shards if s.device == first)
    return total, on_first
