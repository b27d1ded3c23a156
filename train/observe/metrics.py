"""Where a run reports: `metrics.jsonl` and TensorBoard event files (the terminal: progress_bar.py).

`metrics.jsonl` holds only deterministic values (losses, accuracies, learning rate, counts), so
the same config and seed give the same file on CPU, also across a kill and a resume: resuming
from step S drops the lines a killed run wrote after S, and the rerun writes them again.
Timing goes to TensorBoard, the progress display and `summary.json`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from tensorboardX import SummaryWriter

log = logging.getLogger(__name__)


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_metrics(path: str) -> list[dict]:
    """Complete lines of a metrics.jsonl (a line cut by a kill is ignored)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class _JsonLines:
    """An append-only JSON-lines file of one record per step; opening it for a run resumed from
    step S drops the records a killed run wrote after S (the rerun writes them again)."""

    def __init__(self, path: str, resume_step: int):
        self.path = path
        kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
        if kept or os.path.exists(path):
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, path)
        self._file = None

    def write(self, record: dict) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "a")
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:  # the bare error names no file
            raise OSError(e.errno, f"writing {self.path}: {e.strerror}") from e

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class MetricsWriter:
    """Process 0's outputs: `metrics.jsonl`, `layer_stats.jsonl` (deterministic), TensorBoard
    (those plus timing and text samples) and, when given, a W&B logger (train/observe/wandb_log.py)."""

    def __init__(self, workdir: str, resume_step: int, enabled: bool = True, wandb: Any = None):
        self.enabled, self._wandb = enabled, wandb
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not enabled:
            return
        self._metrics = _JsonLines(self.path, resume_step)
        self._layers = _JsonLines(os.path.join(workdir, "layer_stats.jsonl"), resume_step)
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if self.enabled:
            self._metrics.write({"step": step, "split": split, **metrics})
            self.scalars(step, split, metrics)

    def scalars(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """TensorBoard (and W&B) only: for values that are not deterministic (timing)."""
        if self.enabled:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)
            if self._wandb is not None:
                self._wandb.log(step, split, metrics)

    def layer_stats(self, step: int, stats: dict[str, dict[str, float]]) -> None:
        """`{group: {stat: value}}` (train/observe/layer_stats.py) to `layer_stats.jsonl` and TensorBoard."""
        if self.enabled:
            self._layers.write({"step": step, **stats})
            for group, values in stats.items():
                for k, v in values.items():
                    self._tb.add_scalar(f"layers/{k}/{group}", v, step)

    def text(self, step: int, tag: str, markdown: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, markdown, step)

    def summary(self, summary: dict[str, Any]) -> None:
        if self.enabled and self._wandb is not None:
            self._wandb.summary(summary)

    def close(self) -> None:
        if self.enabled:
            self._metrics.close()
            self._layers.close()
            self._tb.close()
            if self._wandb is not None:
                self._wandb.close()
