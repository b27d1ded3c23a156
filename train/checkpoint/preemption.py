"""Preemption: on SIGTERM or SIGINT the run finishes the step in flight, checkpoints it, exits.

While the run prepares (the token cache's build, `preparing`), a signal stops it at once, with
the same exit status: nothing has trained yet, and the build writes only whole files. Then the
handler only records the signal; the loop asks `stop_at(step)` after every step (a Python
attribute read, no device sync), saves a checkpoint at that step (with the metrics of the log
window in progress, so the resumed run logs byte-identical lines), waits until it is committed,
and raises `Preempted`; `train.main` prints one line and exits 143 (SIGTERM) or 130 (SIGINT),
the statuses a shell reports for those signals. A second SIGINT exits at once.

In a multi-process run every process must checkpoint the same step, although a signal may reach
one process only, or each at a different step. A watcher thread per process agrees on it through
the coordination service's key-value store (host RPCs; the devices and the step are untouched):
  1. a process that receives a signal posts the notice (the signal's number) from its handler;
  2. every watcher, on seeing the notice, posts the highest step its loop may reach without
     asking again (`allowed`), and from then on that loop waits at its next `stop_at` until
  3. every process has posted: the agreed step is the largest posted one.
No loop passes its own posted step before the agreement, so every loop can still reach the agreed
step; and the posting is done by the watchers, not the loops, so a loop blocked on a device
result (which needs another process's next step) never holds the agreement up. A process that
leaves the loop posts its final step, so a late notice cannot wait for it forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_POLL_MS = 200  # how often a waiting watcher looks whether its process has closed


class Preempted(Exception):
    """The run stopped on a signal after committing a checkpoint at `step`."""

    def __init__(self, signum: int, step: int, directory: str):
        self.signum, self.step = signum, step
        self.exit_status = 128 + signum
        super().__init__(
            f"{signal.Signals(signum).name}: stopped after step {step}, checkpoint committed in "
            f"{directory}; rerun the same command to resume"
        )


class StoppedBeforeTraining(Preempted):
    """A signal while the run was still preparing (building the token cache): nothing was
    trained, so it stopped at once; what the build finished is kept for the next launch."""

    def __init__(self, signum: int, what: str):
        Exception.__init__(
            self,
            f"{signal.Signals(signum).name}: stopped while {what}, before any step; what it finished "
            "is kept (the token cache's encoded shards); rerun the same command to resume",
        )
        self.signum, self.step, self.exit_status = signum, None, 128 + signum


class PreemptionHandler:
    """Context manager: while inside, SIGTERM and SIGINT ask the loop to stop instead of killing.

    `client`: the coordination service client of a multi-process run (None: one process).
    """

    def __init__(
        self, enabled: bool = True, client: Any = None, process_index: int = 0, process_count: int = 1
    ):
        # Python runs signal handlers in the main thread only; elsewhere, keep the defaults.
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None  # the signal this process received
        self._previous: dict[int, Any] = {}
        self._client = client if process_count > 1 else None
        self._index, self._count = process_index, process_count
        self._cond = threading.Condition()
        self._allowed = 0  # the highest step this process's loop may reach without asking again
        self._posted = False  # its `allowed` is posted: the loop waits for the agreement
        self._notice: int | None = None  # the signal the run stops for (any process's)
        self._target: int | None = None  # the agreed step
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._preparing: str | None = None  # inside `preparing(what)`: a signal stops at once

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user does not want to wait
                os._exit(128 + signum)
            return
        self.signum = signum
        if self._preparing is not None:
            raise StoppedBeforeTraining(signum, self._preparing)
        name = signal.Signals(signum).name
        print(
            f"{name} received: finishing the step in flight and saving a checkpoint",
            file=sys.stderr,
            flush=True,
        )
        if self._client is not None:
            try:  # the first process to post wins; the others' posts fail harmlessly
                self._client.key_value_set(self._key("notice"), str(signum))
            except Exception:
                pass

    @contextlib.contextmanager
    def preparing(self, what: str) -> Iterator[None]:
        """While inside, a signal raises `StoppedBeforeTraining` at once (from the handler, in the
        main thread), instead of waiting for a step: used around the data build, which can take
        minutes and writes only whole files."""
        if self.signum is not None:
            raise StoppedBeforeTraining(self.signum, what)
        self._preparing = what
        try:
            yield
        finally:
            self._preparing = None

    def start(self, step: int) -> None:
        """The loop is about to run step `step + 1`."""
        with self._cond:
            self._allowed = step + 1
        if self._client is not None and self.enabled:
            self._watcher = threading.Thread(target=self._watch, name="preemption-watcher", daemon=True)
            self._watcher.start()

    def stop_at(self, step: int) -> int | None:
        """After step `step`: the signal to stop for, if the run checkpoints here, else None."""
        if self._client is None:
            return self.signum
        with self._cond:
            if not self._posted:
                self._allowed = step + 1
                return None
            while self._target is None and not self._closed.is_set():
                self._cond.wait()
            return self._notice if step == self._target else None

    # -- multi-process agreement (watcher thread) ---------------------------------------------

    def _key(self, name: str) -> str:
        return f"train/preemption/{name}"

    def _watch(self) -> None:
        client = self._client
        while not self._closed.is_set():
            try:
                notice = int(client.blocking_key_value_get(self._key("notice"), _POLL_MS))
                break
            except Exception:  # a timeout: nothing posted yet
                continue
        else:
            return
        with self._cond:
            self._notice, self._posted = notice, True
            allowed = self._allowed
        self._post_step(allowed)
        steps = []
        for i in range(self._count):
            while not self._closed.is_set():
                try:
                    steps.append(int(client.blocking_key_value_get(self._key(f"step/{i}"), _POLL_MS)))
                    break
                except Exception:
                    continue
        with self._cond:
            if len(steps) == self._count:
                self._target = max(steps)
            self._cond.notify_all()

    def _post_step(self, step: int) -> None:
        try:
            self._client.key_value_set(self._key(f"step/{self._index}"), str(step))
        except Exception:  # posted already (by the watcher, before this process closed)
            pass

    def __enter__(self) -> PreemptionHandler:
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        if self._watcher is not None:
            with self._cond:
                posted, allowed = self._posted, self._allowed
            if not posted:  # a notice after this process left must not wait for it
                self._post_step(allowed)
            self._closed.set()
            with self._cond:
                self._cond.notify_all()
            self._watcher.join(timeout=2 * _POLL_MS / 1000)
        for s, handler in self._previous.items():
            # None: a handler installed outside Python (JAX's own SIGTERM notifier); not restorable.
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
