"""notebooks/colab.ipynb runs end to end, headless as docs/running.md says (`jupyter execute`),
against a GPT and a BERT checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow


def _execute(checkpoint: str, folder) -> nbformat.NotebookNode:
    """The notebook as `CHECKPOINT=... jupyter execute colab.ipynb --output=colab_run` leaves it."""
    shutil.copy(os.path.join(REPO, "notebooks", "colab.ipynb"), folder / "colab.ipynb")
    env = {**subprocess_env(), "CHECKPOINT": checkpoint}
    command = [sys.executable, "-m", "jupyter", "execute", "--timeout=300", "--output=colab_run"]
    command.append(str(folder / "colab.ipynb"))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return nbformat.read(str(folder / "colab_run.ipynb"), as_version=4)


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_notebook_runs_against_a_tiny_checkpoint(objective, micro_run, micro_bert_run, tmp_path):
    workdir, step = (micro_run if objective == "clm" else micro_bert_run), 40
    notebook = _execute(os.path.join(workdir, "checkpoints", str(step)), tmp_path)
    text = "\n".join(
        "".join(o.get("text", "") for o in cell.get("outputs", []))
        for cell in notebook.cells
        if cell.cell_type == "code"
    )
    assert f"step {step}, objective {objective}" in text
    assert ("mask 0:" in text) if objective == "mlm" else (" -> " in text)
    assert "scores:" in text and "embeddings: (2, 32)" in text  # the string API, on the HMM symbols
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the attention maps
    tables = [o for c in notebook.cells for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert tables and "| GPT |" in tables[0]["data"]["text/markdown"]
