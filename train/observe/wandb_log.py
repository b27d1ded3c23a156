"""Weights & Biases, optional: `--config.wandb.project=NAME` (and `wandb.entity`, `wandb.mode`).

Process 0 logs the config at start, every train and eval metric and the timing scalars at their
step, and `summary.json` at the end. The run id is kept in `WORKDIR/wandb_run_id`, so a resumed
run continues the same W&B run; steps a killed run had logged past its last checkpoint are
logged again by the resumed run and W&B keeps its first values of them (it never rewinds).
`wandb` is imported only when a project is set (`pip install -e ".[wandb]"`); runs never need it.
"""

from __future__ import annotations

import os
import secrets
import string
from typing import Any

MODES = ("online", "offline", "disabled")
ID_FILE = "wandb_run_id"


def run_id(workdir: str) -> str:
    """The W&B run id of `workdir`: the one kept there, else a new one, kept (atomically)."""
    path = os.path.join(workdir, ID_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id form
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(new + "\n")
    os.replace(tmp, path)
    return new


class WandbLogger:
    """Weights & Biases logging of the run's scalars and texts; the run id is kept in the workdir
    so a resumed run continues the same W&B run."""

    def __init__(self, config: Any, workdir: str):
        import wandb

        w = config.wandb
        self._run = wandb.init(
            project=w.project,
            entity=w.entity or None,
            mode=w.mode,
            id=run_id(workdir),
            resume="allow",
            dir=workdir,
            name=os.path.basename(os.path.abspath(workdir)),
            config=config.to_dict(),
        )
        self._last_step = -1

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if step < self._last_step:  # W&B drops (with a warning per call) what it cannot rewind to
            return
        self._last_step = step
        self._run.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)

    def summary(self, summary: dict[str, Any]) -> None:
        flat = {}
        for k, v in summary.items():
            if isinstance(v, dict):
                flat.update({f"{k}/{kk}": vv for kk, vv in v.items() if isinstance(vv, int | float)})
            elif isinstance(v, int | float):
                flat[k] = v
        self._run.summary.update(flat)

    def close(self) -> None:
        self._run.finish()
