"""Progress of an experiment made of many runs: runs done out of the total, an ETA, and where
each run's log is, one printed line per event (a table's runs take minutes each, and without
this the command is silent between them)."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO


def clock_text(seconds: float) -> str:
    """`seconds` as H:MM:SS."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts the items of one phase (training runs, evaluations) as they start and end, and
    prints `[NAME] VERB k/N: LABEL (DETAIL)` when one starts and `[NAME] k/N done: ...` with an
    ETA when one ends: the mean duration of the items timed so far, times the items left, over
    the items running at once (`jobs`). Items found already done count as done and take no time.
    Thread-safe: parallel jobs report from their own threads."""

    def __init__(
        self,
        name: str,
        total: int,
        jobs: int = 1,
        verb: str = "run",
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name, self.total, self.jobs, self.verb = name, total, max(1, jobs), verb
        self.out, self.clock = out, clock
        self.done, self.durations = 0, []
        self.started_at: dict[str, float] = {}
        self.lock = threading.Lock()

    def skip(self, label: str, why: str = "already finished") -> None:
        """An item that needs no work (a finished run found on disk)."""
        with self.lock:
            self.done += 1
            self._print(f"{self.done}/{self.total} done: {label} {why}")

    def start(self, label: str, detail: str = "") -> None:
        """An item begins; `detail` says what it does or where its log is."""
        with self.lock:
            self.started_at[label] = self.clock()
            number = self.done + len(self.started_at)
            self._print(f"{self.verb} {number}/{self.total}: {label}{' (' + detail + ')' if detail else ''}")

    def finish(self, label: str, detail: str = "") -> None:
        """An item that `start` began has ended; `detail` is its result in a few words."""
        with self.lock:
            seconds = self.clock() - self.started_at.pop(label)
            self.durations.append(seconds)
            self.done += 1
            left = self.total - self.done
            eta = f"; ETA {clock_text(self.eta())} for {left} more" if left else ""
            result = f": {detail}" if detail else ""
            self._print(f"{self.done}/{self.total} done: {label} in {clock_text(seconds)}{result}{eta}")

    def eta(self) -> float:
        """Seconds until every item is done, from the mean duration so far (nan before any)."""
        if not self.durations:
            return math.nan
        left = self.total - self.done
        return sum(self.durations) / len(self.durations) * math.ceil(left / self.jobs)

    def _print(self, line: str) -> None:
        print(f"[{self.name}] {line}", file=self.out or sys.stdout, flush=True)
