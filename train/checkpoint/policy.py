"""When the loop saves: one policy object, asked once per step.

A step is saved when it is a multiple of `checkpoint_every_steps`, when it is the last step,
when `checkpoint_every_minutes` have passed since the last save (asked at log steps only, where
the host syncs anyway, and decided by the chief's clock so every process saves the same step),
and when the run was preempted (SIGTERM / SIGINT): then the loop saves the step in flight and
stops.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils


@dataclasses.dataclass(frozen=True)
class SaveDecision:
    """Whether to save the step just run, and the signal to stop with after saving (preemption)."""

    save: bool
    stop_signal: int | None = None  # preempted: stop after saving, with this signal's status


class SavePolicy:
    """Decides, for each step, whether to save it and whether to stop after it.

    `stop_at(step)` is the preemption handler's question (`PreemptionHandler.stop_at`): the
    signal to stop with at `step`, or None."""

    def __init__(
        self,
        every_steps: int,
        every_minutes: float,
        last_step: int,
        stop_at: Callable[[int], int | None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.every_steps, self.every_minutes, self.last_step = every_steps, every_minutes, last_step
        self._stop_at, self._clock = stop_at, clock
        self._last_save = clock()

    def decide(self, step: int, at_log_step: bool) -> SaveDecision:
        last = step == self.last_step
        save = step % self.every_steps == 0 or last
        save = save or (self.every_minutes > 0 and at_log_step and self._minutes_due())
        signum = self._stop_at(step)
        stop = signum if signum is not None and not last else None
        if save or stop is not None:
            self._last_save = self._clock()
        return SaveDecision(save or stop is not None, stop)

    def _minutes_due(self) -> bool:
        due = self._clock() - self._last_save >= 60 * self.every_minutes
        if jax.process_count() > 1:
            due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
        return due
