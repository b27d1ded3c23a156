"""How the FSDP rule shards each array, and the mesh shape a config asks for."""

from __future__ import annotations

import pytest
from conftest import micro_config
from jax.sharding import PartitionSpec as P

from models.errors import ConfigError
from train.devices.mesh import MIN_SHARDED_SIZE, mesh_shape, param_spec


def test_param_spec_shards_the_largest_dimension_or_nothing():
    assert param_spec((768, 3072), 4) == P(None, "fsdp")
    assert param_spec((3072, 768), 4) == P("fsdp", None)
    # 50257 is prime to 8: GPT-2's embedding stays whole rather than split along its features
    # (which makes every device hold partial logits of the whole batch; tests/test_aot.py).
    assert param_spec((50257, 768), 8) == P()
    assert param_spec((50304, 768), 8) == P("fsdp", None)
    assert param_spec((768, 3072), 1) == P()  # plain data parallelism
    assert param_spec((768,), 4) == P()  # below MIN_SHARDED_SIZE: replicated
    assert param_spec((MIN_SHARDED_SIZE * 3,), 4) == P("fsdp")
    assert param_spec((2,), 4) == P() and param_spec((), 4) == P()  # rng, step
    assert param_spec((1025, 7), 4) == P()  # nothing divisible


@pytest.mark.parametrize(
    "data,fsdp,devices,expected",
    [(-1, 1, 8, (8, 1)), (-1, 4, 8, (2, 4)), (2, 4, 8, (2, 4)), (-1, 8, 8, (1, 8))],
)
def test_mesh_shape(data, fsdp, devices, expected):
    assert mesh_shape(micro_config(**{"mesh.data": data, "mesh.fsdp": fsdp}), devices) == expected


@pytest.mark.parametrize("data,fsdp,match", [(-1, 3, "positive divisor"), (4, 4, "must equal the 8 visible")])
def test_bad_mesh_shapes_name_the_fields(data, fsdp, match):
    with pytest.raises(ConfigError, match=match):
        mesh_shape(micro_config(**{"mesh.data": data, "mesh.fsdp": fsdp}), 8)
