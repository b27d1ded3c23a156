"""The table runner: a two-row, one-seed, few-step table writes its three files, and resumes."""

import csv
import os

import pytest

from experiments.ablate import __main__ as ablate
from experiments.ablate.tables import PRESETS, make_tables

pytestmark = pytest.mark.slow

FEW_STEPS = [
    "--set",
    "num_train_steps=6",
    "--set",
    "log_every_steps=3",
    "--set",
    "eval_every_steps=3",
    "--set",
    "checkpoint_every_steps=3",
    "--set",
    "optim.warmup_steps=2",
    "--set",
    "hmm.eval_sequences=32",
    "--set",
    "seq_len=32",
    "--set",
    "model.max_len=32",
]


def test_two_row_one_seed_table_writes_md_csv_png_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "results")
    argv = ["position", "--preset", "cpu", "--seeds", "1", "--rows", "2", "--out", out, *FEW_STEPS]
    ablate.main(argv)
    printed = capsys.readouterr().out
    log = os.path.join(out, "runs", "position", "clm_position-none", "seed0", "log.txt")
    assert f"[position] run 1/2: clm_position-none seed 0 (log: {log})" in printed
    assert "[position] 1/2 done: clm_position-none seed 0 in 0:" in printed and "; ETA 0:" in printed
    assert "[position] 2/2 done: clm_position-learned seed 0 in 0:" in printed
    for ext in ("md", "csv", "png"):
        assert os.path.getsize(os.path.join(out, f"position.{ext}")) > 0
    md = open(os.path.join(out, "position.md")).read()
    assert "python -m experiments.ablate position --preset cpu --seeds 1" in md
    assert "seeds: 0;" in md and "commit:" in md
    body = [line for line in md.splitlines() if line.startswith("| GPT")]
    assert [line.split("|")[2].strip() for line in body] == ["none", "learned"]
    header = next(line for line in md.splitlines() if line.startswith("| objective"))
    assert "| captured |" in header and "| eval loss |" in header
    runs = list(csv.DictReader(open(os.path.join(out, "position.csv"))))
    assert len(runs) == 2 and {r["position"] for r in runs} == {"none", "learned"}
    # A second call finds both runs finished and reruns nothing.
    before = os.path.getmtime(
        os.path.join(out, "runs", "position", "clm_position-none", "seed0", "summary.json")
    )
    ablate.main(argv)
    assert "[position] 2/2 done: clm_position-learned seed 0 already finished" in capsys.readouterr().out
    after = os.path.getmtime(
        os.path.join(out, "runs", "position", "clm_position-none", "seed0", "summary.json")
    )
    assert before == after


def test_attention_scale_table_records_init_statistics(tmp_path):
    out = str(tmp_path / "results")
    ablate.main(["attn_scale", "--preset", "cpu", "--seeds", "1", "--rows", "1", "--out", out, *FEW_STEPS])
    md = open(os.path.join(out, "attn_scale.md")).read()
    assert "init entropy" in md and "init max p" in md
    # Gradient norms over training, from each run's layer statistics (log steps 3 and 6).
    assert "Gradient norm of the first and the last block (attn_query, attn_key only) over training" in md
    from experiments import runs

    trajectory = runs.block_grad_norms(
        os.path.join(out, "runs", "attn_scale", "clm_scale-sqrt_d_k-16", "seed0")
    )
    assert list(trajectory) == ["blocks0"] and [s for s, _ in trajectory["blocks0"]] == [3, 6]
    assert all(v > 0 for _, v in trajectory["blocks0"])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_row_of_every_table_is_a_valid_config(preset):
    """A typo in a table would otherwise surface only after hours of other rows."""
    import configs
    from experiments.ablate.tables import run_overrides
    from train.config_checks import validate

    for table in make_tables().values():
        for row in table.rows:
            overrides = run_overrides(table, row, preset, seed=0)
            config = configs.get_config(row.objective, "tiny", overrides)
            validate(config)
            if "d_k" in row.setting:  # the attention-scale table varies the head dim
                assert config.model.d_model // config.model.num_heads == row.setting["d_k"]


def test_seq2seq_table_reports_accuracy_by_length_and_plots_the_attention_kinds(tmp_path):
    out = str(tmp_path / "results")
    steps = [kv for kv in FEW_STEPS[1::2] if not kv.startswith(("seq_len", "model.max_len", "hmm."))]
    sizes = ["seq2seq.max_len=12", "seq2seq.eval_lengths=(4,12)", "seq2seq.eval_examples=8"]
    argv = ["seq2seq", "--preset", "cpu", "--seeds", "1", "--rows", "3", "--out", out]
    for kv in [*steps, *sizes, "seq_len=14", "model.max_len=14"]:
        argv += ["--set", kv]
    ablate.main(argv)
    md = open(os.path.join(out, "seq2seq.md")).read()
    for model in ("transformer", "lstm_bottleneck", "lstm_attention"):
        rows = [line for line in md.splitlines() if line.startswith(f"| seq2seq | copy | {model} |")]
        assert len(rows) == 3  # the main table, exact match by length, token accuracy by length
    assert "| n=4 | n=12 |" in md
    assert os.path.getsize(os.path.join(out, "seq2seq_attention.png")) > 0
    assert os.path.getsize(os.path.join(out, "seq2seq.png")) > 0
