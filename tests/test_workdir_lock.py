"""One run per workdir: a second launcher is refused naming the holder; after the holder is
SIGKILLed the kernel has released the lock, and the next launcher runs (and resumes)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import REPO, run_command, subprocess_env, train_command

from train.checkpoint.workdir_lock import WorkdirBusy, workdir_lock


def test_the_lock_is_exclusive_and_released_on_exit(tmp_path):
    with workdir_lock(str(tmp_path)):
        with pytest.raises(WorkdirBusy, match=f"in use by pid {os.getpid()} on host"):
            with workdir_lock(str(tmp_path)):
                pass
    with workdir_lock(str(tmp_path)):  # released when the first holder let go
        pass
    with workdir_lock(str(tmp_path), enabled=False), workdir_lock(str(tmp_path), enabled=False):
        pass  # the processes of a multi-process run other than the chief take no lock


@pytest.mark.slow
def test_a_second_launcher_is_refused_and_one_after_a_sigkill_is_not(tmp_path):
    workdir = str(tmp_path / "run")
    env = subprocess_env()
    holder = subprocess.Popen(
        train_command(workdir, num_train_steps=2000, checkpoint_every_steps=10),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = os.path.join(workdir, ".lock")
        deadline = time.time() + 120
        while not (os.path.exists(lock) and open(lock).read()) and holder.poll() is None:
            assert time.time() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        second = run_command(train_command(workdir), env=env)
        assert second.returncode == 2
        assert f"is in use by pid {holder.pid} on host" in second.stderr
        assert "compiled" not in second.stderr  # refused before building anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    third = run_command(train_command(workdir), env=env)
    assert third.returncode == 0, third.stderr[-2000:]
