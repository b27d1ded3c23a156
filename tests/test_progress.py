"""An experiment's progress lines: runs done out of the total, each run's log, and an ETA from
the runs timed so far (a clock the test sets)."""

from __future__ import annotations

import io

from experiments.progress import Progress, clock_text


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counts_runs_names_logs_and_estimates_what_is_left():
    out, clock = io.StringIO(), Clock()
    progress = Progress("heads", 4, out=out, clock=clock)
    progress.skip("clm_heads-1 seed 0")
    progress.start("clm_heads-2 seed 0", "log: runs/heads/clm_heads-2/seed0/log.txt")
    clock.now = 90.0
    progress.finish("clm_heads-2 seed 0", "eval loss 2.3000")
    progress.start("clm_heads-4 seed 0")
    clock.now = 120.0
    progress.finish("clm_heads-4 seed 0")
    assert out.getvalue().splitlines() == [
        "[heads] 1/4 done: clm_heads-1 seed 0 already finished",
        "[heads] run 2/4: clm_heads-2 seed 0 (log: runs/heads/clm_heads-2/seed0/log.txt)",
        "[heads] 2/4 done: clm_heads-2 seed 0 in 0:01:30: eval loss 2.3000; ETA 0:03:00 for 2 more",
        "[heads] run 3/4: clm_heads-4 seed 0",
        # A skipped run takes no time: the mean is of the two trained ones, (90 + 30) / 2.
        "[heads] 3/4 done: clm_heads-4 seed 0 in 0:00:30; ETA 0:01:00 for 1 more",
    ]


def test_parallel_jobs_divide_the_time_left():
    clock = Clock()
    progress = Progress("scaling", 9, jobs=4, out=io.StringIO(), clock=clock)
    for label in "abcd":
        progress.start(label)
    clock.now = 60.0
    progress.finish("a")
    # 8 left, 4 at a time: two more rounds of a minute.
    assert progress.eta() == 120.0
    assert clock_text(3725.4) == "1:02:05"
