"""A run refused for its config or data exits 2 with one line naming the field or file and the
fix, and leaves no workdir behind when it made the workdir itself; a truncated or invalid
tokenizer file is named, whichever way it is reached (tokenizer.path, load_hf)."""

from __future__ import annotations

import os

import pytest
from conftest import run_command, train_command

from models.errors import ConfigError
from train.inference import load_hf


def _truncated_tokenizer(folder) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tokenizer.json")
    with open(path, "w") as f:
        f.write('{"version": "1.0", "truncation": null, "model": {"type": "BPE", "vocab": {"a"')
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["glob matches nothing", "truncated tokenizer.json"])
def test_a_refused_run_is_one_line_exit_2_and_leaves_no_new_workdir(case, tmp_path):
    if case == "glob matches nothing":
        overrides, named = {"dataset": f"text:{tmp_path}/none/*.txt"}, f"{tmp_path}/none/*.txt"
    else:
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        (corpus / "a.txt").write_text("some text\n" * 50)
        named = _truncated_tokenizer(str(tmp_path / "tok"))
        overrides = {"dataset": f"text:{corpus}/*.txt", "tokenizer.path": named}
    workdir = str(tmp_path / "run")
    result = run_command(train_command(workdir, **overrides))
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(workdir)


def test_load_hf_names_a_truncated_tokenizer_file(tmp_path):
    path = _truncated_tokenizer(str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=f"tokenizer {path}: the tokenizers library cannot read it"):
        load_hf(str(tmp_path / "hub"))
