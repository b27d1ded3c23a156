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
from conftest import REPO, run_command, subprocess_env, train_command, with_shard_bytes

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


@pytest.mark.parametrize(
    ("where", "limit_kb", "file"),
    [("encode workers", 32, r"\.build/shards/\d+\.npz"), ("packing", 100, r"/out-\d+/train_tokens\.npy")],
)
def test_a_full_disk_during_the_cache_build_exits_4_naming_the_file_and_the_rerun_completes(
    where, limit_kb, file, tmp_path
):
    """A real EFBIG: the file-size limit is set as the run starts, between the sizes of the
    tokenizer (7.7 KB) and of a shard (50 KB), or of a shard and of the packed tokens (158 KB)."""
    from conftest import write_corpus

    corpus = write_corpus(tmp_path / "corpus", n_files=100, paragraphs=12)
    overrides = {"dataset": f"text:{corpus}", "tokenizer.vocab_size": 512, "data_workers": 2}
    overrides |= {"data_cache_dir": str(tmp_path / "cache"), "num_train_steps": 10}
    cmd = train_command(str(tmp_path / "run"), **overrides)
    full = run_command(with_shard_bytes(cmd, 65536, file_size_limit=limit_kb * 1024))
    assert full.returncode == WRITE_FAILED_EXIT, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert re.search(
        rf"error: \[Errno 27\] writing the token cache file \S*{file}: File too large", errors[0]
    )
    again = run_command(with_shard_bytes(cmd, 65536))
    assert again.returncode == 0, again.stderr[-3000:]
