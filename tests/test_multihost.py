"""Two processes on loopback (CPU, gloo collectives) train like one process with two devices,
and resume after both are killed."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import start_processes

pytestmark = pytest.mark.slow


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_processes_match_one_process_with_two_devices_and_resume(
    two_process_run, two_device_run, tmp_path
):
    one = two_device_run
    two = two_process_run
    summary = json.load(open(os.path.join(two, "summary.json")))
    assert summary["devices"] == 2
    reference = _metrics(one)
    assert [(r["step"], r["split"]) for r in _metrics(two)] == [(r["step"], r["split"]) for r in reference]
    for a, b in zip(reference, _metrics(two), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)

    # Kill both once step 20 is on disk, then start both again: the same metrics.
    resumed = str(tmp_path / "resumed")
    procs = start_processes(resumed)
    ckpt = os.path.join(resumed, "checkpoints")
    while not (os.path.isdir(ckpt) and "20" in os.listdir(ckpt)):
        assert all(p.poll() is None for p in procs), "a process ended before it was killed"
        time.sleep(0.01)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    procs = start_processes(resumed)
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs[0][-3000:]
    assert "resumed from step" in errs[0]
    assert _metrics(resumed) == _metrics(two)
