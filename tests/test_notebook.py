"""notebooks/colab.ipynb runs end to end against a checkpoint this test trains."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO, subprocess_env, train_command

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_notebook_runs_against_a_tiny_checkpoint(objective, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    result = subprocess.run(
        train_command(workdir, objective, num_train_steps=20),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for key, value in subprocess_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CHECKPOINT", os.path.join(workdir, "checkpoints", "20"))
    notebook = nbformat.read(os.path.join(REPO, "notebooks", "colab.ipynb"), as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, resources={"metadata": {"path": REPO}}).execute()
    outputs = {
        i: "".join(o.get("text", "") for o in cell.get("outputs", []))
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    }
    text = "\n".join(outputs.values())
    assert "step 20, objective " + objective in text
    assert ("mask 0:" in text) if objective == "mlm" else (" -> " in text)
    assert "scores:" in text and "embeddings: (2, 32)" in text  # the string API, on the HMM symbols
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the attention maps
    tables = [o for c in notebook.cells for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert tables and "| GPT |" in tables[0]["data"]["text/markdown"]
