"""Shared helpers: a micro config that trains in seconds, and the command line of a real run."""

from __future__ import annotations

import os
import socket
import sys

import pytest

import configs
from experiments.tools.make_text_corpus import write_corpus  # noqa: F401  (re-exported for tests)
from train.host_memory import retain_freed_memory

# As every entry point does, before any test starts JAX's CPU client (train/host_memory.py).
retain_freed_memory()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small enough that a real `train.main` process runs 40 steps in a few seconds on 2 cores.
MICRO_OVERRIDES = {
    "model.num_layers": 2,
    "model.d_model": 32,
    "model.num_heads": 2,
    "model.mlp_dim": 64,
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
}


def micro_config(objective: str = "clm", **overrides):
    return configs.get_config(objective, "tiny", {**MICRO_OVERRIDES, **overrides})


def train_command(workdir: str, objective: str = "clm", **overrides) -> list[str]:
    config = f"{configs.FILES[objective]}:tiny"
    flags = [f"--config.{k}={v}" for k, v in {**MICRO_OVERRIDES, **overrides}.items()]
    return [sys.executable, "-m", "train.main", f"--config={config}", f"--workdir={workdir}", *flags]


def process_commands(cmd: list[str], count: int = 2) -> list[list[str]]:
    """The command of each process of a `count`-process run on loopback (as on `count` hosts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}"]
    return [cmd + flags + [f"--process_id={i}"] for i in range(count)]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


@pytest.fixture
def micro():
    return micro_config
