"""What the experiment commands share: the presets, objective display names, `--set` parsing,
the formatting of results tables (cells, columns, markdown), the commit stamp, and measurements
cached as JSON in a run's folder.

`experiments.ablate` and `experiments.compare` each derive their presets from `PRESETS`,
writing only the fields where they differ.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from configs.sizes import SIZES

# Overrides shared by every run of a preset, on top of configs/<objective>.py:tiny. The `cpu`
# preset trains on a 2-core CPU in minutes; `gpu` uses the `small` shapes for one accelerator
# (configs/sizes.py).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        **SIZES["cpu"].overrides(),
        "seq_len": 128,
        "batch_size": 32,
        "num_train_steps": 400,
        "optim.warmup_steps": 40,
        "log_every_steps": 50,
        "eval_every_steps": 100,
        "checkpoint_every_steps": 100,
    },
    "gpu": {
        **SIZES["small"].overrides(),
        "seq_len": 128,
        "batch_size": 128,
        "num_train_steps": 5000,
        "optim.warmup_steps": 250,
        "optim.learning_rate": 1e-3,
        "log_every_steps": 100,
        "eval_every_steps": 500,
        "checkpoint_every_steps": 500,
    },
}

OBJECTIVE_NAMES: dict[str, str] = {
    "clm": "GPT",
    "mlm": "BERT",
    "prefix_lm": "prefix LM",
    "hybrid": "GPT-BERT hybrid",
    "seq2seq": "seq2seq",
}


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items as overrides; a value that is no Python literal stays a string."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


class Column(NamedTuple):
    """A column of a results table: its title, the result key it shows, the decimals of a cell."""

    title: str
    key: str
    decimals: int


def cell(values: Sequence[float], decimals: int) -> str:
    """Mean ± sample std over seeds (the mean alone for one seed; empty for none)."""
    if not values:
        return ""
    mean = float(np.mean(values))
    if decimals == 0:
        return f"{mean:,.0f}" + (f" ± {np.std(values, ddof=1):,.0f}" if len(values) > 1 else "")
    spread = f" ± {np.std(values, ddof=1):.{decimals}f}" if len(values) > 1 else ""
    return f"{mean:.{decimals}f}{spread}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a markdown table: header, separator, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _git(*args: str) -> str:
    # Run from this file's folder, so the stamp is the checkout's whatever the working directory.
    result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=os.path.dirname(__file__))
    return result.stdout.strip()


def commit_stamp() -> str:
    """The short sha of HEAD, with "+local changes" when tracked files differ from it."""
    try:
        sha = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return sha + ("+local changes" if dirty else "") if sha else "unknown"


def cached_json(path: str, compute: Callable[[], Any]) -> Any:
    """The JSON at `path`, computed and written first if absent (atomically, so an interrupted
    command never leaves half a file that a resumed one would read)."""
    if not os.path.exists(path):
        result = compute()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(f"{path}.tmp", "w") as f:
            json.dump(result, f)
        os.replace(f"{path}.tmp", path)
    # Read back even when just computed, so a fresh and a resumed command see the same values.
    with open(path) as f:
        return json.load(f)
