"""Preemption of a two-process run (loopback, as tests/test_multihost.py): a signal that reaches
one process or both makes both checkpoint the same step and exit 143 or 130; starting both again
ends byte-identical to an uninterrupted two-process run (metrics.jsonl)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import pytest
from conftest import start_processes

from train.checkpoint.preemption import PreemptionHandler

STEPS = 40  # the micro config's default: the uninterrupted run is shared (conftest)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    return [p.communicate(timeout=600)[1] for p in procs]


def _metrics(workdir: str) -> str:
    return open(os.path.join(workdir, "metrics.jsonl")).read()


class _KeyValueStore:
    """The two calls of the coordination client the agreement uses, in memory."""

    def __init__(self):
        self.values: dict[str, str] = {}
        self.cond = threading.Condition()

    def key_value_set(self, key: str, value: str) -> None:
        with self.cond:
            if key in self.values:
                raise RuntimeError(f"ALREADY_EXISTS: {key}")
            self.values[key] = value
            self.cond.notify_all()

    def blocking_key_value_get(self, key: str, timeout_in_ms: int) -> str:
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.values, timeout_in_ms / 1000):
                raise TimeoutError(key)
            return self.values[key]


def _loops(
    speeds: list[float], signal_at: dict[int, int], last_steps: tuple = (200, 200)
) -> list[int | None]:
    """Runs one training loop per process in threads, at `speeds` seconds per step; process i
    receives SIGTERM after step `signal_at[i]`. Returns the step each loop stopped at (None: it
    ran to its last step)."""
    store, stopped = _KeyValueStore(), [None] * len(speeds)
    handlers = [PreemptionHandler(client=store, process_index=i, process_count=len(speeds)) for i in range(2)]

    def loop(i: int) -> None:
        handlers[i].start(0)
        for step in range(1, last_steps[i] + 1):
            time.sleep(speeds[i])
            if signal_at.get(i) == step:
                handlers[i]._handle(signal.SIGTERM, None)  # what the OS signal would call
            if handlers[i].stop_at(step) is not None:
                stopped[i] = step
                break
        handlers[i].__exit__(None, None, None)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(speeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a loop waits forever"
    return stopped


@pytest.mark.parametrize("signal_at", [{0: 5}, {1: 5}, {0: 5, 1: 9}])
def test_loops_at_different_speeds_agree_on_the_step_to_stop_at(signal_at):
    stopped = _loops([0.001, 0.02], signal_at)
    assert stopped[0] == stopped[1] is not None
    assert stopped[0] >= min(signal_at.values())


def test_a_notice_after_one_process_finished_does_not_wait_for_it():
    # Process 0 finishes its 20 steps at once; process 1 is signalled at step 30 of 200.
    stopped = _loops([0.0, 0.005], {1: 30}, last_steps=(20, 200))
    assert stopped[0] is None and stopped[1] is not None and stopped[1] >= 30


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, targets",
    [(signal.SIGTERM, [1]), (signal.SIGINT, [0, 1])],
    ids=["SIGTERM-to-process-1-only", "SIGINT-to-both"],
)
def test_both_processes_checkpoint_one_step_and_resume_identically(
    two_process_run, signum, targets, tmp_path
):
    workdir = str(tmp_path / "run")
    procs = start_processes(workdir)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and open(metrics).read()):
        assert all(p.poll() is None for p in procs), "a process ended before the signal"
        assert time.time() < deadline
        time.sleep(0.05)
    t0 = time.time()
    for i in targets:
        procs[i].send_signal(signum)
    errs = _finish(procs)
    seconds = time.time() - t0
    assert [p.returncode for p in procs] == [128 + signum] * 2, errs[0][-3000:] + errs[1][-3000:]
    steps = set()
    for err in errs:
        found = re.search(
            r"stopped after step (\d+), checkpoint committed in .*; rerun the same command", err
        )
        assert found, err[-3000:]
        steps.add(int(found.group(1)))
    assert len(steps) == 1, f"the processes stopped at different steps: {steps}"
    step = steps.pop()
    assert step < STEPS and os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))
    print(f"{signal.Signals(signum).name} to {targets}: both stopped after step {step}, {seconds:.2f} s")

    procs = start_processes(workdir)
    errs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert f"resumed from step {step}" in errs[0]
    assert _metrics(workdir) == _metrics(two_process_run)
