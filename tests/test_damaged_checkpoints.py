"""Damaged checkpoints: a committed checkpoint whose bytes change later (a flipped byte, a
truncated file) is caught by its fingerprint or its restore, moved to `checkpoints/damaged/`
(never deleted), and the run resumes from the one before and ends identical; with none intact
the run stops naming each step; `load_trained` refuses a damaged step."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import REPO, subprocess_env, train_command

from train.checkpoint.restore import CheckpointDamaged
from train.inference.load import load_trained


def _run(workdir: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_command(workdir), cwd=REPO, env=subprocess_env(), capture_output=True, text=True
    )


def _largest_file(folder: str) -> str:
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    return max(files, key=os.path.getsize)


def _damage(step_folder: str, how: str, path: str | None = None) -> None:
    path = path or _largest_file(os.path.join(step_folder, "state"))
    size = os.path.getsize(path)
    if how == "flip":  # 64 bytes in the middle, inverted: the file still parses
        with open(path, "r+b") as f:
            f.seek(size // 2)
            data = f.read(64)
            f.seek(size // 2)
            f.write(bytes(b ^ 0xFF for b in data))
    else:
        os.truncate(path, size // 2)


@pytest.fixture
def finished(micro_run):
    return micro_run


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(finished, how, tmp_path):
    workdir = str(tmp_path / "run")
    subprocess.run(["cp", "-r", finished, workdir], check=True)
    checkpoints = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    _damage(os.path.join(checkpoints, str(steps[-1])), how)
    os.remove(os.path.join(workdir, "summary.json"))

    result = _run(workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"checkpoint step {steps[-1]} is damaged" in result.stderr
    assert f"resumed from step {steps[-2]}" in result.stderr
    assert os.path.isdir(os.path.join(checkpoints, "damaged", str(steps[-1])))  # kept, not deleted
    assert (
        open(os.path.join(workdir, "metrics.jsonl")).read()
        == open(os.path.join(finished, "metrics.jsonl")).read()
    )


@pytest.mark.slow
def test_with_no_intact_checkpoint_the_run_stops_naming_each_step(finished, tmp_path):
    workdir = str(tmp_path / "run")
    subprocess.run(["cp", "-r", finished, workdir], check=True)
    checkpoints = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    for step in steps:
        _damage(os.path.join(checkpoints, str(step)), "flip")
    result = _run(workdir)
    assert result.returncode == 2
    assert "no checkpoint in" in result.stderr and "does not start from scratch" in result.stderr
    for step in steps:
        assert f"step {step}: " in result.stderr
    assert sorted(os.listdir(os.path.join(checkpoints, "damaged"))) == sorted(map(str, steps))


@pytest.mark.slow
def test_load_trained_refuses_a_checkpoint_whose_parameters_changed(finished, tmp_path):
    workdir = str(tmp_path / "run")
    subprocess.run(["cp", "-r", finished, workdir], check=True)
    checkpoints = os.path.join(workdir, "checkpoints")
    # Step 30's arrays under step 40's checksums: a state that restores cleanly, every parameter
    # changed (flipping bytes would hit the parameters or not, by how Orbax laid out its files).
    shutil.rmtree(os.path.join(checkpoints, "40", "state"))
    shutil.copytree(os.path.join(checkpoints, "30", "state"), os.path.join(checkpoints, "40", "state"))
    with pytest.raises(CheckpointDamaged, match="arrays differ from the checksums saved with them"):
        load_trained(workdir)
    load_trained(workdir, step=30)  # the step before is intact
