"""The profiler switch: `--config.profile.start_step=S --config.profile.num_steps=K` records a
`jax.profiler` trace of steps S .. S+K-1 into `WORKDIR/profile/` (TensorBoard's profile plugin:
`tensorboard --logdir WORKDIR/profile`; or open the `.trace.json.gz` in Perfetto).

Each step in the window is a `StepTraceAnnotation`, so the profile's step view lines up with
training steps; the trace stops once step S+K-1's device work is done. A run resumed at or past
S does not trace again, nor does one whose workdir already holds a trace (a run killed after its
window but before its next checkpoint).
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

import jax

log = logging.getLogger(__name__)


class ProfileWindow:
    """A `jax.profiler` trace of steps `start_step .. start_step + num_steps - 1` into
    WORKDIR/profile, taken once per run: a resumed run that already has its trace does not redo it."""

    def __init__(self, start_step: int, num_steps: int, workdir: str, resume_step: int):
        self.dir = os.path.join(workdir, "profile")
        self.first, self.last = start_step, start_step + num_steps - 1
        traced = bool(glob.glob(os.path.join(self.dir, "plugins", "profile", "*")))
        self.enabled = num_steps > 0 and resume_step < start_step and not traced
        self._annotation: Any = None
        self._active = False

    def before(self, step: int) -> None:
        if not self.enabled or not self.first <= step <= self.last:
            return
        if step == self.first:
            jax.profiler.start_trace(self.dir)
            self._active = True
            log.info("profiling steps %d..%d into %s", self.first, self.last, self.dir)
        self._annotation = jax.profiler.StepTraceAnnotation("train", step_num=step)
        self._annotation.__enter__()

    def after(self, step: int, state: Any) -> None:
        if not self._active:
            return
        self._annotation.__exit__(None, None, None)
        if step == self.last:
            jax.block_until_ready(state)  # the window's device work, not just its dispatch
            self.close()

    def close(self) -> None:
        if self._active:
            jax.profiler.stop_trace()
            self._active = False
            log.info("profile written to %s", self.dir)
