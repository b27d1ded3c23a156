"""The run built once: `build_run(config, workdir)` turns a config into everything a step needs.

Data source, mesh, model config, objective, optimizer and schedule, the run's identity, the
state and batch shardings, and the jitted `train_step` (FSDP shardings in and out, the state
donated, gradient accumulation as configured). The trainer, `experiments.bench` and the ablation
measurements all build their step here, so what they time or measure is what a run trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from models import registry
from models.transformer_config import LATER_FIELDS
from train.data.sources import make_source
from train.devices.mesh import batch_sharding, make_mesh, replicated, state_shardings, traced_in
from train.loop import step as step_lib
from train.objectives import Objective, make_objective
from train.tokenizer.vocab import DEFAULT

# Model fields that change how, not what, is computed: a run may resume with other values.
EXECUTION_FIELDS = ("remat", "attention_impl", "loss_impl", "loss_chunk_tokens")


def run_identity(config: Any, model_cfg: registry.ModelConfig) -> dict:
    """What a checkpoint must match to be resumed (or loaded) as this run."""

    def what(fields: dict) -> dict:  # an encoder-decoder nests its stack's fields
        return {
            k: what(v) if isinstance(v, dict) else v
            for k, v in fields.items()
            if k not in EXECUTION_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])
        }

    return {
        "model": what(dataclasses.asdict(model_cfg)),
        "objective": config.objective,
        "mask": config.mask,
        "dataset": config.dataset,
    }


@dataclasses.dataclass
class Run:
    """Everything a step of a config needs, built once by `build_run`: data source, mesh, model
    config, objective, optimizer, identity, shardings, the jitted init and train step."""

    config: Any
    source: Any  # None when built for a given vocabulary (benchmarks feed random tokens)
    vocab_size: int
    mesh: Mesh
    model_config: registry.ModelConfig
    objective: Objective
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    graphdef: nnx.GraphDef
    identity: dict
    state_sharding: Any
    data_sharding: NamedSharding
    abstract_state: Any  # ShapeDtypeStructs carrying their shardings: what a restore fills
    init_state: Callable[[], step_lib.TrainState]  # jitted: parameters are born sharded
    train_step: Callable  # jitted `train_step(state, batch) -> (state, metrics)`, state donated

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.abstract_state.params))

    def model(self, seed: int | None = None) -> nnx.Module:
        """A freshly initialised model, as `init_state` initialises it (on the default device)."""
        seed = self.config.seed if seed is None else seed
        params_rng = jax.random.split(jax.random.PRNGKey(seed))[0]
        return registry.make_model(self.model_config, nnx.Rngs(params=params_rng))


def build_run(
    config: Any,
    workdir: str,
    *,
    vocab_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    platform: str | None = None,
) -> Run:
    """Everything a step of `config` needs; the data source is built (in `workdir`) unless a
    `vocab_size` is given. The mesh spans `devices` (default: every device of the run; a TPU
    topology's compile-only devices to compile ahead of time). "auto" attention is resolved for
    the mesh's platform, or for `platform` ("gpu": a GPU's step, exported from a CPU host). The
    config should already have passed `config_checks.validate`."""
    source = (
        make_source(config, workdir, jax.process_index(), jax.process_count()) if vocab_size is None else None
    )
    vocab_size = source.vocab_size if source is not None else vocab_size
    mesh = make_mesh(config, devices)
    # Resolved for the devices the step compiles for, which a TPU compiled ahead of time on a
    # CPU host is not the default backend of.
    platform = platform or mesh.devices.flat[0].platform
    model_cfg = registry.for_platform(registry.model_config(config, vocab_size), platform)
    objective = make_objective(config, vocab_size, source.specials if source is not None else DEFAULT)
    tx = step_lib.make_optimizer(config)
    schedule = step_lib.make_schedule(config)
    graphdef, _ = step_lib.abstract_model(model_cfg)
    data_sharding = batch_sharding(mesh)

    def init() -> step_lib.TrainState:
        return step_lib.init_state(model_cfg, tx, config.seed)

    state_sharding = state_shardings(mesh, jax.eval_shape(init))
    init_state = jax.jit(init, out_shardings=state_sharding)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        jax.eval_shape(init_state),
        state_sharding,
    )
    train_step = jax.jit(
        traced_in(
            mesh,
            step_lib.make_train_step(
                graphdef,
                tx,
                objective,
                config.mask,
                schedule,
                config.grad_accum_steps,
                config.nonfinite == "skip",
                layer_stats_at=(config.log_every_steps, config.num_train_steps)
                if config.log_layer_stats
                else None,
            ),
        ),
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,),
    )
    return Run(
        config=config,
        source=source,
        vocab_size=vocab_size,
        mesh=mesh,
        model_config=model_cfg,
        objective=objective,
        tx=tx,
        schedule=schedule,
        graphdef=graphdef,
        identity=run_identity(config, model_cfg),
        state_sharding=state_sharding,
        data_sharding=data_sharding,
        abstract_state=abstract_state,
        init_state=init_state,
        train_step=train_step,
    )
