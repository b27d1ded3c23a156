"""The loop in process (train/loop/): a short micro run logs, evaluates and checkpoints at the
steps its config names, and a second call in the same workdir resumes from the last checkpoint
and runs no step again. The real-process faults (kills, signals) are in test_run.py and
test_preemption.py."""

from __future__ import annotations

import json
import os

from train.checkpoint.format import FORMAT_VERSION
from train.loop.trainer import train_and_evaluate
from train.observe.metrics import read_metrics


def test_a_short_run_logs_evaluates_checkpoints_and_resumes_without_rerunning(micro, tmp_path):
    config = micro("clm", num_train_steps=12, log_every_steps=3, eval_every_steps=6, checkpoint_every_steps=6)
    workdir = str(tmp_path / "run")
    summary = train_and_evaluate(config, workdir)
    assert summary["final_step"] == 12 and summary["steps_this_session"] == 12
    lines = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [(r["step"], r["split"]) for r in lines] == [
        (3, "train"), (6, "train"), (6, "eval"), (9, "train"), (12, "train"), (12, "eval"),
    ]  # fmt: skip
    assert sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == ["12", "6"]
    identity = json.load(open(os.path.join(workdir, "checkpoints", "12", "identity", "metadata")))
    assert identity["format"] == FORMAT_VERSION and identity["objective"] == "clm"
    assert json.load(open(os.path.join(workdir, "summary.json")))["eval"] == summary["eval"]

    again = train_and_evaluate(config, workdir)
    assert again["steps_this_session"] == 0
    assert again["eval"] == summary["eval"]
    assert read_metrics(os.path.join(workdir, "metrics.jsonl")) == lines
