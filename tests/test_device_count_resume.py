"""A run checkpointed on 4 devices (mesh data 2 x fsdp 2) resumes on 2 and on 1: the state is
resharded on restore, its fingerprints still verify, and every metric after the resume equals
the uninterrupted 4-device run's within float reduction order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import REPO, subprocess_env, train_command


def _env(devices: int) -> dict[str, str]:
    return {**subprocess_env(), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _lines(workdir: str) -> list[dict]:
    return [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("devices") / "four")
    cmd = train_command(workdir, **{"mesh.fsdp": 2})
    result = subprocess.run(cmd, cwd=REPO, env=_env(4), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.load(open(os.path.join(workdir, "summary.json")))["mesh"] == {"data": 2, "fsdp": 2}
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 1])
def test_a_four_device_checkpoint_resumes_on_fewer_devices(four_devices, devices, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(four_devices, workdir)
    for step in ("30", "40"):  # as if the 4-device run had stopped after its step-20 checkpoint
        shutil.rmtree(os.path.join(workdir, "checkpoints", step))
    os.remove(os.path.join(workdir, "summary.json"))
    cmd = train_command(workdir, **{"mesh.fsdp": 1})
    result = subprocess.run(cmd, cwd=REPO, env=_env(devices), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from step 20" in result.stderr
    assert json.load(open(os.path.join(workdir, "summary.json")))["devices"] == devices
    after, reference = _lines(workdir), _lines(four_devices)
    assert [(x["step"], x["split"]) for x in after] == [(x["step"], x["split"]) for x in reference]
    for a, b in zip(reference, after, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
