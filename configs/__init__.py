"""One config file per objective; `FILES` maps each objective to its file, for the experiment
commands and the tests (`--config configs/gpt.py:tiny` on a command line is the same config)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import ml_collections

from configs import base

FILES: dict[str, str] = {
    "clm": "configs/gpt.py",
    "mlm": "configs/bert.py",
    "prefix_lm": "configs/prefix_lm.py",
    "hybrid": "configs/hybrid.py",
    "seq2seq": "configs/seq2seq.py",
}


def get_config(objective: str, variant: str = "tiny", overrides: dict[str, Any] | None = None):
    """The config `--config FILES[objective]:variant --config.k=v ...` gives, overrides applied."""
    module = importlib.import_module(FILES[objective].removesuffix(".py").replace("/", "."))
    config: ml_collections.ConfigDict = module.get_config(variant)
    return base.override(config, overrides or {})


def train_command(
    objective: str, workdir: str, overrides: dict[str, Any] | None = None, variant: str = "tiny"
) -> list[str]:
    """The `python -m train.main` command line of that config in `workdir` (run from the repo
    root): what the experiment commands launch and the tests run."""
    flags = [f"--config.{k}={v}" for k, v in (overrides or {}).items()]
    config = f"--config={FILES[objective]}:{variant}"
    return [sys.executable, "-m", "train.main", config, f"--workdir={workdir}", *flags]
