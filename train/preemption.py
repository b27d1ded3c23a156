"""Preemption: on SIGTERM or SIGINT the run finishes the step in flight, checkpoints it, exits.

The handler only records the signal; the loop checks the flag after every step (a Python
attribute read, no device sync), saves a checkpoint at that step (with the metrics of the log
window in progress, so the resumed run logs byte-identical lines), waits until it is committed,
and raises `Preempted`; `train.main` prints one line and exits 143 (SIGTERM) or 130 (SIGINT),
the statuses a shell reports for those signals. A second SIGINT exits at once.

Single-process runs only: in a multi-process run every process would have to agree on the step
(issue 14 leaves that open), so there the signals keep their default action, as under SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after committing a checkpoint at `step`."""

    def __init__(self, signum: int, step: int, directory: str):
        self.signum, self.step = signum, step
        self.exit_status = 128 + signum
        super().__init__(
            f"{signal.Signals(signum).name}: stopped after step {step}, checkpoint committed in "
            f"{directory}; rerun the same command to resume"
        )


class PreemptionHandler:
    """Context manager: while inside, SIGTERM and SIGINT set `signum` instead of killing."""

    def __init__(self, enabled: bool = True):
        # Python runs signal handlers in the main thread only; elsewhere, keep the defaults.
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user does not want to wait
                os._exit(128 + signum)
            return
        self.signum = signum
        name = signal.Signals(signum).name
        print(
            f"{name} received: finishing the step in flight and saving a checkpoint",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> PreemptionHandler:
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
