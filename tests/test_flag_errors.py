"""Mistakes on the command line of `python -m train.main` end in one line naming the flag and
the fix, exit status 2, and leave no workdir behind (train/flag_errors.py)."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import run_command

MISTAKES = {
    "misspelt field": (
        ["--config=configs/gpt.py:tiny", "--config.num_train_step=10"],
        "--config.num_train_step: the config has no field 'num_train_step'; did you mean num_train_steps?",
    ),
    "misspelt nested field": (
        ["--config=configs/bert.py:tiny", "--config.model.d_modl=64"],
        "--config.model.d_modl: the config has no field 'd_modl'; did you mean d_model?",
    ),
    "unknown variant": (
        ["--config=configs/gpt.py:tinny"],
        "--config=configs/gpt.py:tinny: unknown config variant 'tinny'; choose one of",
    ),
    "missing config file": (
        ["--config=configs/gtp.py:tiny"],
        "--config=configs/gtp.py:tiny: no such config file; pass configs/<name>.py:<variant>",
    ),
    "value of the wrong type": (
        ["--config=configs/gpt.py:tiny", "--config.num_train_steps=ten"],
        "--config.num_train_steps=ten: invalid literal for int()",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_command_line_mistake_is_one_line_with_exit_2(mistake, tmp_path):
    flags, expected = MISTAKES[mistake]
    workdir = str(tmp_path / "run")
    result = run_command([sys.executable, "-m", "train.main", f"--workdir={workdir}", *flags])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert expected in lines[0]
    assert not os.path.exists(workdir)
