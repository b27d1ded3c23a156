"""A checkpoint write that fails stops the run with exit status 4 and a message naming the step,
the directory and the error; the checkpoints before it stay intact, and once the disk is fine
again the same command resumes from them and ends identical to an uninterrupted run.

The failure is a real one from the operating system: once step 10 is committed, the test lowers
the running process's file-size limit (RLIMIT_FSIZE, through prlimit) below the size of a
checkpoint's files, so every later checkpoint write fails with EFBIG as a full disk fails with
ENOSPC (the run's logs stay under the limit). Tests run as root, which permission bits do not stop.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time

import pytest
from conftest import REPO, run_command, subprocess_env, train_command

from train.checkpoint.manager import WRITE_FAILED_EXIT

pytestmark = pytest.mark.slow

STEPS = 60
LIMIT_BYTES = 16 * 1024  # a micro run's metrics.jsonl and TensorBoard file stay under this; checkpoints not


def _metrics(workdir: str) -> str:
    return open(os.path.join(workdir, "metrics.jsonl")).read()


def test_a_failing_checkpoint_write_stops_the_run_and_leaves_earlier_checkpoints_resumable(tmp_path):
    reference = str(tmp_path / "reference")
    done = run_command(train_command(reference, num_train_steps=STEPS))
    assert done.returncode == 0, done.stderr[-2000:]

    workdir = str(tmp_path / "run")
    cmd = train_command(workdir, num_train_steps=STEPS)
    run = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    first = os.path.join(workdir, "checkpoints", "10")
    deadline = time.time() + 120
    while not os.path.isdir(first):
        assert run.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.005)
    resource.prlimit(run.pid, resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))
    _, stderr = run.communicate(timeout=300)

    assert run.returncode == WRITE_FAILED_EXIT, stderr[-3000:]
    directory = os.path.join(workdir, "checkpoints")
    found = re.search(
        rf"error: writing checkpoint step (\d+) in {re.escape(directory)} failed: .*File too large.*\n"
        r"the newest complete checkpoint is step (\d+), untouched",
        stderr,
    )
    assert found, stderr[-3000:]
    failed, newest = int(found.group(1)), int(found.group(2))
    assert 10 <= newest < failed < STEPS
    committed = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
    assert committed[-1] == newest and 10 in committed

    # The disk is fine again (a new process, no limit): the same command resumes and finishes.
    resumed = run_command(cmd)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {newest}" in resumed.stderr
    assert "damaged" not in resumed.stderr  # the earlier checkpoints restored and verified
    assert _metrics(workdir) == _metrics(reference)
