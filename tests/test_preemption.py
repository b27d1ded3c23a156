"""Preemption with real signals: SIGTERM or SIGINT finishes the step in flight, commits a
checkpoint at that step, exits 143 or 130; the same command then ends byte-identical to an
uninterrupted run (metrics.jsonl), wherever in a log window the signal landed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_command, subprocess_env, train_command, with_shard_bytes

STEPS = 40  # the micro config's default: the uninterrupted run is the shared one (conftest)


def _metrics(workdir: str) -> str:
    return open(os.path.join(workdir, "metrics.jsonl")).read()


@pytest.fixture(scope="module")
def uninterrupted(micro_run):
    return _metrics(micro_run)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_the_step_in_flight_and_the_same_command_resumes_identically(
    uninterrupted, signum, tmp_path
):
    workdir = str(tmp_path / "run")
    cmd = train_command(workdir, num_train_steps=STEPS)
    run = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 120
    while not (os.path.exists(metrics) and open(metrics).read()) and run.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    t0 = time.time()
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    seconds = time.time() - t0
    assert run.returncode == 128 + signum, stderr[-2000:]
    found = re.search(r"stopped after step (\d+), checkpoint committed in .*; rerun the same command", stderr)
    assert found, stderr[-2000:]
    step = int(found.group(1))
    assert step < STEPS and os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))
    print(f"{signal.Signals(signum).name}: stopped after step {step}, {seconds:.2f} s from signal to exit")

    resumed = run_command(cmd)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {step}" in resumed.stderr
    assert _metrics(workdir) == uninterrupted


@pytest.mark.slow
def test_a_second_sigint_exits_at_once():
    code = (
        "import os, signal, time\n"
        "from train.checkpoint.preemption import PreemptionHandler\n"
        "with PreemptionHandler() as handler:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.2)\n"
        "    print('first', handler.signum == signal.SIGINT, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "    print('not reached', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 130
    assert result.stdout.split() == ["first", "True"]


@pytest.mark.slow
def test_time_based_checkpoints_land_on_log_steps_and_change_no_metric(uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    # Due at every log step: a checkpoint at each one, between the step interval's (every 10).
    cmd = train_command(workdir, num_train_steps=STEPS, checkpoint_every_minutes=1e-6, keep_checkpoints=100)
    result = run_command(cmd)
    assert result.returncode == 0, result.stderr[-2000:]
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == list(range(5, STEPS + 1, 5))  # micro runs log every 5 steps
    assert _metrics(workdir) == uninterrupted


@pytest.mark.slow
def test_sigterm_while_the_token_cache_builds_stops_within_seconds_and_the_same_command_resumes(tmp_path):
    from conftest import write_corpus

    corpus = write_corpus(tmp_path / "corpus", n_files=200, paragraphs=12)
    text = {
        "dataset": f"text:{corpus}",
        "tokenizer.vocab_size": 512,
        "data_cache_dir": str(tmp_path / "cache"),
    }
    cmd = with_shard_bytes(
        train_command(str(tmp_path / "run"), num_train_steps=10, data_workers=2, **text), 4096
    )
    run = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    packed, shards = tmp_path / "cache" / "packed", []
    deadline = time.time() + 120
    while run.poll() is None and time.time() < deadline and len(shards) < 3:
        builds = list(packed.glob("*.build/shards")) if packed.is_dir() else []
        shards = list(builds[0].glob("*.npz")) if builds else []
        time.sleep(0.005)
    assert len(shards) >= 3, "the build ended before the signal"
    sent = time.time()
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err[-2000:]
    assert time.time() - sent < 3  # not after the build, the compile and a step
    assert "SIGTERM: stopped while building the model and its data, before any step" in err
    kept = list(packed.glob("*.build/shards/*.npz"))
    assert len(kept) >= len(shards) and not (tmp_path / "run" / "checkpoints").exists()
    again = run_command(cmd)
    assert again.returncode == 0, again.stderr[-2000:]
