"""Checkpoint layouts: a step folder stores its layout version with its identity, and folders
of the older layouts (no version stored; version 1 without the `progress` item, version 2 with
it but without checksums) still resume to the same end and still load for inference."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import run_command, train_command

from train.checkpoint.format import FORMAT_VERSION, format_version
from train.checkpoint.restore import read_identity
from train.inference.load import load_trained


def _json_item(step_folder: str, item: str) -> str:
    return os.path.join(step_folder, item, "metadata")


def _downgrade(step_folder: str, version: int) -> None:
    """Rewrites a step folder as the layout `version` wrote it."""
    path = _json_item(step_folder, "identity")
    identity = json.load(open(path))
    del identity["format"]
    json.dump(identity, open(path, "w"))
    if version == 1:
        shutil.rmtree(os.path.join(step_folder, "progress"))
    else:
        progress_path = _json_item(step_folder, "progress")
        progress = json.load(open(progress_path))
        del progress["fingerprint"]
        json.dump(progress, open(progress_path, "w"))


@pytest.mark.slow
def test_a_new_checkpoint_stores_its_layout_version(micro_run):
    folder = os.path.join(micro_run, "checkpoints", "40")
    assert json.load(open(_json_item(folder, "identity")))["format"] == FORMAT_VERSION
    assert format_version(folder, json.load(open(_json_item(folder, "identity")))) == FORMAT_VERSION
    assert "format" not in read_identity(folder)  # the run identity compared on resume


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_an_older_layout_resumes_to_the_same_end_and_loads(micro_run, version, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(micro_run, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    shutil.rmtree(os.path.join(checkpoints, "40"))
    os.remove(os.path.join(workdir, "summary.json"))
    old = os.path.join(checkpoints, "30")
    _downgrade(old, version)
    assert format_version(old, json.load(open(_json_item(old, "identity")))) == version

    assert load_trained(workdir).step == 30
    result = run_command(train_command(workdir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from step 30" in result.stderr
    resumed, reference = (open(os.path.join(w, "metrics.jsonl")).read() for w in (workdir, micro_run))
    assert resumed == reference
