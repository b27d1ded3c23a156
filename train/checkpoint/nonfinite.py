"""Non-finite losses and gradients: caught without a per-step host sync, never checkpointed.

The step's metrics stay on device until the loop reads them anyway (log, eval and checkpoint
steps; a checkpoint step is always a log step). There every step since the last check is
inspected, in order, before anything is logged, evaluated or saved:
- `nonfinite = "stop"`: the first step whose loss or gradient norm is NaN or Inf, or after which
  a parameter or optimizer-state value is (metric `state_finite`: a finite loss with a huge
  learning rate writes infinite parameters), ends the run (exit status 3) with the step, the
  values, the newest checkpoint (finite, since none is saved past an unchecked step) and the
  usual causes;
- `nonfinite = "skip"`: the step already left the state as it was (`train.loop.step`, on device);
  the run ends the same way after `max_skipped_in_a_row` consecutive skipped steps.
An eval whose loss is not finite ends the run the same way, in either mode: a run never ends
with status 0 and a non-finite eval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EXIT_STATUS = 3
MODES = ("stop", "skip")
_WATCHED = ("loss", "grad_norm")


class NonFiniteError(RuntimeError):
    """A run that cannot go on: its loss or gradient stopped being finite."""


class NonFiniteWatch:
    """Reads the metrics of every step since the last check, in order: with mode `stop` the first
    non-finite loss or gradient norm ends the run; with `skip` the run ends after
    `max_skipped_in_a_row` skipped steps in a row."""

    def __init__(self, mode: str, max_skipped_in_a_row: int):
        self.mode = mode
        self.max_skipped_in_a_row = max_skipped_in_a_row
        self.skipped_in_a_row = 0

    def check(self, steps: Sequence[tuple[int, dict]]) -> str | None:
        """`(step, fetched metrics)` in step order; a description of the failure, or None."""
        for step, metrics in steps:
            bad = {k: float(metrics[k]) for k in _WATCHED if not np.isfinite(metrics[k])}
            if float(metrics.get("state_finite", 1.0)) < 1:
                bad["parameters or optimizer state"] = "not all finite after the update"
            if not bad:
                self.skipped_in_a_row = 0
                continue
            values = ", ".join(f"{k}={v}" if isinstance(v, float) else f"{k} {v}" for k, v in bad.items())
            if self.mode == "stop":
                return f"step {step}: {values} (not finite)"
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= self.max_skipped_in_a_row:
                return (
                    f"step {step}: {values}, the {self.skipped_in_a_row}th skipped step in a row "
                    f"(max_skipped_in_a_row={self.max_skipped_in_a_row})"
                )
        return None


def failure_message(problem: str, latest_checkpoint: int | None, directory: str) -> str:
    if latest_checkpoint is None:
        where = "no checkpoint was written before it, so a rerun starts from scratch"
    else:
        where = (
            f"the newest checkpoint, step {latest_checkpoint} in {directory}, holds finite parameters "
            "and optimizer state (every step up to it was checked) and a rerun of the same command "
            "resumes from it, but the same config may diverge again from there"
        )
    return (
        f"non-finite values at {problem}; {where}. Usual causes: a learning rate too high or a "
        "warmup too short (optim.learning_rate, optim.warmup_steps), overflow in reduced precision "
        "(try model.dtype=float32), or bad data. The same config meets the same step again; "
        "nonfinite=skip skips such steps (up to max_skipped_in_a_row in a row)."
    )
