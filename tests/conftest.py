"""Shared helpers: a micro config that trains in seconds, and the command line of a real run."""

from __future__ import annotations

import os
import socket

import pytest

import configs
from configs.sizes import SIZES
from experiments.tools.make_text_corpus import write_corpus  # noqa: F401  (re-exported for tests)
from train.devices.host_memory import retain_freed_memory

# As every entry point does, before any test starts JAX's CPU client (train/devices/host_memory.py).
retain_freed_memory()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small enough that a real `train.main` process runs 40 steps in a few seconds on 2 cores.
MICRO_OVERRIDES = {
    **SIZES["micro"].overrides(),
    "model.max_len": 32,
    "seq_len": 32,
    "batch_size": 8,
    "hmm.num_states": 8,
    "hmm.num_symbols": 16,
    "hmm.eval_sequences": 16,
    "num_train_steps": 40,
    "log_every_steps": 5,
    "eval_every_steps": 10,
    "checkpoint_every_steps": 10,
    "optim.warmup_steps": 5,
    # Generation would compile at the first eval (~4 s a run); test_observability turns it on.
    "eval_samples": 0,
}


def micro_config(objective: str = "clm", **overrides):
    return configs.get_config(objective, "tiny", {**MICRO_OVERRIDES, **overrides})


def train_command(workdir: str, objective: str = "clm", **overrides) -> list[str]:
    """The command line of a micro run (`MICRO_OVERRIDES`, then `overrides`)."""
    return configs.train_command(objective, workdir, {**MICRO_OVERRIDES, **overrides})


def process_commands(cmd: list[str], count: int = 2) -> list[list[str]]:
    """The command of each process of a `count`-process run on loopback (as on `count` hosts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}"]
    return [cmd + flags + [f"--process_id={i}"] for i in range(count)]


def run_command(cmd: list[str], env: dict[str, str] | None = None):
    """A command run to its end from the repo root (default env: `subprocess_env()`), output captured."""
    import subprocess

    return subprocess.run(
        cmd, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True, timeout=600
    )


def start_processes(workdir: str, count: int = 2, **overrides) -> list:
    """The processes of a `count`-process micro run (loopback), started; stderr piped as text."""
    import subprocess

    return [
        subprocess.Popen(
            cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for cmd in process_commands(train_command(workdir, **overrides), count)
    ]


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> str:
    """The workdir of an uninterrupted micro GPT run (`train_command` defaults), for every test
    that only reads it or copies it."""
    workdir = str(tmp_path_factory.mktemp("micro_run") / "run")
    result = run_command(train_command(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory) -> str:
    """The workdir of an uninterrupted two-process micro run (shared by the multi-process tests)."""
    workdir = str(tmp_path_factory.mktemp("two_processes") / "run")
    procs = start_processes(workdir)
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    return workdir


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


@pytest.fixture
def micro():
    return micro_config


# -- Hugging Face weights (tests/test_hf_weights.py, tests/test_hf_import.py) -----------------


def random_transformer(cfg, seed: int = 0):
    """A `Transformer` of `cfg` with every parameter redrawn: biases non-zero, norm scales away from 1."""
    import jax
    from flax import nnx

    from models.transformer import Transformer

    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    new = [1.0 + 0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, [0.3 * (x - 1.0) + (x.ndim == 1) * 0.5 for x in new]))
    return model


def param_dict(model) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())


def transformer_with(params: dict, cfg):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from models.transformer import Transformer

    model = Transformer(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return model


def write_hub_dir(path, tensors: dict, config: dict) -> str:
    """A directory in the Hub's layout: config.json and a PyTorch-format model.safetensors."""
    import json

    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return str(path)


def tensorboard_events(folder: str) -> list[tuple[str, int, object]]:
    """(tag, step, value) of every scalar (a float) and text (a str) in the TensorBoard event
    files under `folder`, read as TFRecords with tensorboardX's protos."""
    import glob
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True)):
        data = open(path, "rb").read()
        at = 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                if v.HasField("tensor") and v.tensor.string_val:
                    out.append((v.tag, event.step, v.tensor.string_val[0].decode()))
                elif v.HasField("simple_value"):
                    out.append((v.tag, event.step, v.simple_value))
    return out
