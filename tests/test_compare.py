"""The comparison runner end to end at micro size, and the sampling command on its runs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os

import pytest
import tfds_mock
from conftest import MICRO_OVERRIDES

from experiments.compare import __main__ as compare
from experiments.compare import evaluate
from experiments.tools import sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compare"))
    sizes = dict(
        probe_train=32, probe_eval=16, pairs=16, finetune_train=64, finetune_eval=64, finetune_steps=10
    )
    old = dict(evaluate.EVALS["cpu"])
    evaluate.EVALS["cpu"].update(sizes)
    # The comparison's own HMM; only its eval set at the micro size.
    sets = {k: v for k, v in MICRO_OVERRIDES.items() if not k.startswith("hmm.") or k == "hmm.eval_sequences"}
    sets.update({"num_train_steps": 20, "model.max_len": 64, "checkpoint_every_steps": 20})
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            path = compare.run_comparison("cpu", 1, out, sets, "python -m experiments.compare (test)")
    finally:
        evaluate.EVALS["cpu"].update(old)
    return out, path, printed.getvalue()


def test_progress_names_each_runs_log_and_each_evaluation(comparison):
    out, _, printed = comparison
    log = os.path.join(out, "runs", "compare", "clm", "seed0", "log.txt")
    assert f"[compare] run 1/4: clm seed 0 (log: {log})" in printed
    assert "[compare] 4/4 done: hybrid seed 0 in 0:" in printed
    assert "[compare] evaluation 1/4: clm seed 0 (probes, minimal pairs, fine-tuning)" in printed
    assert "[compare] 1/4 done: clm seed 0 in 0:" in printed and "; ETA 0:" in printed


def test_writes_the_table_csv_and_plot_for_every_objective(comparison):
    out, md_path, _ = comparison
    md = open(md_path).read()
    for name in ("GPT", "BERT", "prefix LM", "GPT-BERT hybrid"):
        assert f"| {name} |" in md
    assert "command: `python -m experiments.compare (test)`" in md and "seeds: 0" in md
    assert os.path.getsize(os.path.join(out, "compare.png")) > 10_000
    rows = list(csv.DictReader(open(os.path.join(out, "compare.csv"))))
    by = {r["objective"]: r for r in rows}
    assert set(by) == set(compare.OBJECTIVES)
    # Equal tokens seen; the masked LM predicts ~15% of them, the others (almost) all.
    seen = {float(r["tokens_seen"]) for r in rows}
    assert seen == {20 * 8 * 32}
    assert float(by["mlm"]["tokens_predicted"]) == pytest.approx(0.15 * 20 * 8 * 31, rel=0.1)
    assert float(by["clm"]["tokens_predicted"]) == 20 * 8 * 31
    assert float(by["mlm"]["train_flops"]) < float(by["clm"]["train_flops"])
    for r in rows:
        for key in ("probe_best", "pairs_accuracy", "finetune_accuracy", "probe_layer0", "probe_layer2"):
            assert 0.0 <= float(r[key]) <= 1.0
        assert float(r["probe_filtering"]) <= float(r["probe_smoothing"])
    # Masked-token view only where the model has one; next-token view everywhere but BERT.
    assert by["hybrid"]["masked_captured"] and by["mlm"]["masked_captured"]
    assert not by["clm"]["masked_captured"] and not by["mlm"]["next_token_captured"]


def test_an_interrupted_comparison_resumes_without_retraining(comparison):
    out, _, _ = comparison
    workdir = os.path.join(out, "runs", "compare", "clm", "seed0")
    cached = json.load(open(os.path.join(workdir, "compare_eval.json")))
    mtime = os.path.getmtime(os.path.join(workdir, "summary.json"))
    result = evaluate.evaluate_run(workdir, "clm", "cpu", 0, {})
    assert result == cached and os.path.getmtime(os.path.join(workdir, "summary.json")) == mtime


def test_sample_generates_from_gpt_and_fills_masks_with_bert(comparison, capsys):
    out, _, _ = comparison
    runs = os.path.join(out, "runs", "compare")
    sample.main(
        ["--workdir", f"{runs}/clm/seed0", "--prompt", "s3 s4", "--prompt", "s5", "--max_new_tokens", "5"]
    )
    text = capsys.readouterr().out
    lines = [x for x in text.splitlines() if " -> " in x]
    assert len(lines) == 2 and all(len(x.split(" -> ")[1].split()) <= 5 for x in lines)
    sample.main(["--workdir", f"{runs}/mlm/seed0", "--prompt", "s3 <mask> s4"])
    text = capsys.readouterr().out
    assert "mask 0:" in text and "s" in text.split("mask 0:")[1]
    sample.main(["--workdir", f"{runs}/prefix_lm/seed0", "--prompt", "s1", "--temperature", "0"])
    assert " -> " in capsys.readouterr().out


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_classify_fine_tunes_a_text_run_on_sst2(objective, micro_run, micro_text_runs, capsys, tmp_path):
    from experiments.tools import classify

    workdir = micro_text_runs[objective]
    with tfds_mock.mock_data(tmp_path, num_examples=40):
        classify.main(
            ["--workdir", workdir, "--task", "sst2", "--seq_len", "32", "--steps", "5", "--seeds", "2"]
        )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x.get("seed") for x in lines[:2]] == [0, 1]
    assert 0.0 <= lines[-1]["accuracy"]["mean"] <= 1.0 and lines[-1]["accuracy"]["seeds"] == 2
    with pytest.raises(SystemExit, match="trained on the HMM corpus"):
        classify.main(["--workdir", micro_run, "--task", "sst2"])
