"""The benchmark command runs on a fresh machine and reports what it promises (no speed asserts)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import MICRO_OVERRIDES, REPO, subprocess_env

pytestmark = pytest.mark.slow


def _bench(config: str, *extra: str) -> dict:
    flags = [f"--config.{k}={v}" for k, v in MICRO_OVERRIDES.items()]
    cmd = [sys.executable, "-m", "experiments.bench", f"--config={config}", *flags, *extra]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("config", ["configs/gpt.py:tiny", "configs/bert.py:tiny"])
def test_train_benchmark_reports_speed_flops_mfu_and_memory(config):
    out = _bench(config, "--steps=10", "--vocab_size=64")
    assert out["timed_steps"] == 10 and out["vocab_size"] == 64
    assert out["step_seconds_min"] <= out["step_seconds_median"] <= out["step_seconds_max"]
    assert out["tokens_per_sec"] == pytest.approx(8 * 32 / out["step_seconds_median"])
    assert out["flops_per_step_causal_halved"] < out["flops_per_step"]
    assert 0 < out["mfu"] == pytest.approx(out["model_flops_per_sec"] / out["peak_flops_per_sec"])
    assert out["step_memory"]["peak_bytes"] > 0
    assert out["xla_flops_per_device"] >= 0.9 * out["flops_per_step"]  # XLA counts every op
    if "bert" in config:  # 15% of 31 eligible tokens per row are predicted
        assert out["predicted_tokens_per_sec"] == pytest.approx(8 * 5 / out["step_seconds_median"], rel=1e-6)


def test_decode_benchmark_generates_the_same_tokens_both_ways():
    out = _bench("configs/gpt.py:tiny", "--decode=16")
    assert out["same_tokens"] and out["decode_new_tokens"] == 16
    assert out["kv_cache_tokens_per_sec"] > 0 and out["recompute_tokens_per_sec"] > 0


@pytest.mark.parametrize("config", ["configs/gpt.py:tiny", "configs/bert.py:tiny"])
def test_hf_baseline_runs_interleaved_at_the_same_shapes(config):
    pytest.importorskip("transformers")
    flags = ("--steps=10", "--vocab_size=64", "--config.model.position=learned")
    out = _bench(config, *flags, "--baseline=hf", "--matmul_floor")
    base = out["baseline"]
    ours, hf = out["matmul_floor"], base["matmul_floor"]
    assert out["speedup_vs_baseline_bound"] == pytest.approx(base["step_seconds_median"] / ours["seconds"])
    assert ours["seconds"] == pytest.approx(sum(d["count"] * d["seconds_each"] for d in ours["by_dot"]))
    if "gpt" in config:  # the same matmuls in other forms; HF's BERT projects every position
        assert ours["flops"] == hf["flops"]
    assert base["model"] == ("FlaxGPT2LMHeadModel" if "gpt" in config else "FlaxBertForMaskedLM")
    assert out["speedup_vs_baseline"] == pytest.approx(
        base["step_seconds_median"] / out["step_seconds_median"]
    )
    # Same shapes; the counts differ only by architectural extras (biases, BERT's token-type
    # embeddings and MLM head transform).
    assert 0.8 < base["params"] / out["params"] < 1.5


def test_hf_baseline_learns_one_batch_with_our_optimizer_and_targets():
    pytest.importorskip("transformers")
    from configs import base, gpt
    from experiments.bench.hf_baseline import make_hf_runner
    from experiments.bench.speed import random_batch

    overrides = {**MICRO_OVERRIDES, "optim.warmup_steps": 0, "num_train_steps": 1000}
    config = base.override(gpt.get_config("tiny"), overrides)
    runner = make_hf_runner(config, 64, random_batch(config, 64))
    losses = []
    for _ in range(100):
        runner.params, runner.opt_state, loss = runner.step(runner.params, runner.opt_state, runner.batch)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(float(np.log(64)), rel=0.1)  # uniform at init
    assert losses[-1] < 0.5 * losses[0]


def test_attention_benchmark_times_each_implementation_here(capsys):
    from experiments.bench import attention

    attention.main(["--batch", "2", "--seq_len", "128", "--heads", "2", "--head_dim", "8"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["shape_BLNH"] == [2, 128, 2, 8]
    assert out["xla_ms"] > 0 and out["einsum_ms"] > 0 and "cudnn_ms" not in out
    assert out["key_limits"] == [64, 128] and out["einsum_key_limits_ms"] > 0


def test_the_accelerator_table_runs_here_at_tiny_shapes(tmp_path):
    """`python -m experiments.bench.accelerator` (GPT-2 and BERT-base in bf16 on a GPU or TPU) runs
    end to end on this CPU at the `tiny` shapes: a row per model and step (remat off; no cuDNN
    here; the fused step is the chunked loss with CPU's own attention)."""
    from experiments.bench import accelerator

    flags = {
        "--out": tmp_path,
        "--shapes": "tiny",
        "--vocab_size": 64,
        "--per_device_batch": 2,
        "--steps": 3,  # the timing's arithmetic, not its precision
    }
    accelerator.main([str(x) for kv in {**flags, "--remats": "none"}.items() for x in kv])
    rows = list(csv.DictReader(open(tmp_path / "accelerator_cpu.csv")))
    assert [(r["model"], r["step"], r["attention"], r["loss"], r["remat"]) for r in rows] == [
        ("gpt2", "materialised", "xla", "full", "none"),
        ("gpt2", "fused", "einsum", "chunked", "none"),
        ("bert_base", "materialised", "xla", "full", "none"),
        ("bert_base", "fused", "einsum", "chunked", "none"),
    ]
    for r in rows:
        assert float(r["tokens_per_s_per_device"]) == pytest.approx(2 * 128 / (float(r["step_ms"]) / 1e3))
        assert 0 < float(r["mfu"]) and float(r["memory_gib"]) > 0 and r["roofline_ms"] == ""
    md = open(tmp_path / "accelerator_cpu.md").read()
    assert (
        "command: `python -m experiments.bench.accelerator --out" in md
        and "| bert_base | fused (einsum, chunked) | none | 2 x 128 |" in md
    )
