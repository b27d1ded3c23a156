"""Where a run reports: `metrics.jsonl`, TensorBoard event files, and progress on the terminal.

`metrics.jsonl` holds only deterministic values (losses, accuracies, learning rate, counts), so
the same config and seed give the same file on CPU, also across a kill and a resume: resuming
from step S drops the lines a killed run wrote after S, and the rerun writes them again.
Timing goes to TensorBoard, the progress display and `summary.json`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from typing import Any

import tqdm
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
    (those plus timing and text samples) and, when given, a W&B logger (train/wandb_log.py)."""

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
        """`{group: {stat: value}}` (train/layer_stats.py) to `layer_stats.jsonl` and TensorBoard."""
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


class Progress:
    """A tqdm bar on a terminal; plain log lines (with the same numbers) anywhere else."""

    def __init__(
        self,
        start_step: int,
        total_steps: int,
        tokens_per_step: int,
        flops_per_step: float = 0.0,
        peak_flops_per_sec: float = 0.0,
        devices: int = 1,
    ):
        self.tokens_per_step, self.total, self.devices = tokens_per_step, total_steps, devices
        self.flops_per_step, self.peak = flops_per_step, peak_flops_per_sec
        self._interactive = sys.stderr.isatty()
        self._bar = tqdm.tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not self._interactive,
        )
        self._last_step, self._last_time = start_step, time.perf_counter()

    def update(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Call at log steps. Returns the timing since the previous call: steps and tokens per
        second, tokens per second per device, and MFU (model FLOPs per second over the peak)."""
        now = time.perf_counter()
        steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        tokens_per_sec = steps_per_sec * self.tokens_per_step
        timing = {
            "steps_per_sec": steps_per_sec,
            "tokens_per_sec": tokens_per_sec,
            "tokens_per_sec_per_device": tokens_per_sec / self.devices,
        }
        if self.peak > 0:
            timing["mfu"] = steps_per_sec * self.flops_per_step / self.peak
        mfu = f"  MFU {100 * timing['mfu']:.2f}%" if "mfu" in timing else ""
        eta = (self.total - step) / max(steps_per_sec, 1e-9)
        if self._interactive:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(
                loss=f"{metrics.get('loss', float('nan')):.4f}",
                tok_s=f"{timing['tokens_per_sec']:,.0f}",
                **({"mfu": f"{100 * timing['mfu']:.2f}%"} if "mfu" in timing else {}),
            )
        else:
            log.info(
                "step %d/%d  loss %.4f  %.2f steps/s  %.0f tokens/s%s  ETA %s",
                step,
                self.total,
                metrics.get("loss", float("nan")),
                steps_per_sec,
                timing["tokens_per_sec"],
                mfu,
                datetime.timedelta(seconds=round(eta)),
            )
        return timing

    def message(self, text: str) -> None:
        if self._interactive:
            self._bar.write(text)
        else:
            log.info("%s", text)

    def close(self) -> None:
        self._bar.close()
