"""A run checkpointed on 4 devices (mesh data 2 x fsdp 2) resumes on 2 and on 1: the state is
resharded on restore, its fingerprints still verify, and every metric after the resume equals
the uninterrupted 4-device run's within float reduction order. On text data a run of two
processes resumes on one: the data position carries over, and the metrics equal a one-process
run's throughout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import (
    REPO,
    device_env,
    process_commands,
    run_command,
    train_command,
)


def _env(devices: int) -> dict[str, str]:
    return device_env(devices)


def _lines(workdir: str) -> list[dict]:
    return [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 1])
def test_a_four_device_checkpoint_resumes_on_fewer_devices(four_device_run, devices, tmp_path):
    # The shared run (conftest), data 2 x fsdp 2.
    assert json.load(open(os.path.join(four_device_run, "summary.json")))["mesh"] == {"data": 2, "fsdp": 2}
    workdir = str(tmp_path / "run")
    shutil.copytree(four_device_run, workdir)
    for step in ("30", "40"):  # as if the 4-device run had stopped after its step-20 checkpoint
        shutil.rmtree(os.path.join(workdir, "checkpoints", step))
    os.remove(os.path.join(workdir, "summary.json"))
    cmd = train_command(workdir, **{"mesh.fsdp": 1})
    result = run_command(cmd, env=_env(devices))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from step 20" in result.stderr
    assert json.load(open(os.path.join(workdir, "summary.json")))["devices"] == devices
    _assert_same_metrics(_lines(workdir), _lines(four_device_run))


def _assert_same_metrics(after: list[dict], reference: list[dict]) -> None:
    assert [(x["step"], x["split"]) for x in after] == [(x["step"], x["split"]) for x in reference]
    for a, b in zip(reference, after, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)


@pytest.mark.slow
def test_a_two_process_text_run_resumes_on_one_process_with_its_data_position(micro_text_runs, tmp_path):
    # MLM: its mask is drawn per position of the global batch, so the metrics tell whether the
    # rows arrive in the same order (a CLM loss would only tell the same set of rows). The
    # reference is the shared one-process run on the same files (it built the token cache that
    # these processes read).
    text, reference = micro_text_runs["overrides"], micro_text_runs["mlm"]
    workdir = str(tmp_path / "two_then_one")
    procs = [
        subprocess.Popen(
            cmd, cwd=REPO, env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for cmd in process_commands(train_command(workdir, "mlm", **text))
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    for step in ("30", "40"):  # as if the two-process run had stopped after its step-20 checkpoint
        shutil.rmtree(os.path.join(workdir, "checkpoints", step))
    os.remove(os.path.join(workdir, "summary.json"))
    result = run_command(train_command(workdir, "mlm", **text), env=_env(2))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from step 20" in result.stderr
    _assert_same_metrics(_lines(workdir), _lines(reference))
