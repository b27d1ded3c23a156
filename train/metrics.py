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


class MetricsWriter:
    def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not enabled:
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        try:
            self._file.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
            self._file.flush()
        except OSError as e:  # the bare error names no file
            raise OSError(e.errno, f"writing {self.path}: {e.strerror}") from e
        self.scalars(step, split, metrics)

    def scalars(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """TensorBoard only: for values that are not deterministic (timing)."""
        if self.enabled:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


class Progress:
    """A tqdm bar on a terminal; plain log lines (with the same numbers) anywhere else."""

    def __init__(self, start_step: int, total_steps: int, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.total = total_steps
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
        """Call at log steps. Returns the timing since the previous call."""
        now = time.perf_counter()
        steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        timing = {"steps_per_sec": steps_per_sec, "tokens_per_sec": steps_per_sec * self.tokens_per_step}
        eta = (self.total - step) / max(steps_per_sec, 1e-9)
        if self._interactive:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(
                loss=f"{metrics.get('loss', float('nan')):.4f}",
                tok_s=f"{timing['tokens_per_sec']:,.0f}",
            )
        else:
            log.info(
                "step %d/%d  loss %.4f  %.2f steps/s  %.0f tokens/s  ETA %s",
                step,
                self.total,
                metrics.get("loss", float("nan")),
                steps_per_sec,
                timing["tokens_per_sec"],
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
