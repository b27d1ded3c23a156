"""Seeing inside a run: MFU as the benchmark defines it, the profiler window (not redone on
resume), per-layer statistics equal to a reference computed outside the step (and leaving the
training metrics as they were), samples at eval in TensorBoard, and an offline W&B run that a
resume continues under one id."""

from __future__ import annotations

import glob
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config, run_command, subprocess_env, tensorboard_events, train_command
from flax import nnx

from train.data.sources import make_source
from train.loop.build import build_run

PEAK = 2e9  # FLOP/s per device, set so that MFU is reproducible from the logged timing


@pytest.fixture(scope="module")
def observed_run(tmp_path_factory) -> str:
    """A micro GPT run with everything on: a set peak, a profile of steps 5-7, layer statistics,
    two eval samples."""
    workdir = str(tmp_path_factory.mktemp("observed") / "run")
    overrides = {
        "peak_flops_per_device": PEAK,
        "profile.start_step": 5,
        "profile.num_steps": 3,
        "log_layer_stats": True,
        "eval_samples": 2,
    }
    result = run_command(train_command(workdir, **overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "stderr.txt"), "w") as f:
        f.write(result.stderr)
    return workdir


@pytest.mark.slow
def test_mfu_in_the_progress_line_and_tensorboard_is_the_benchmarks(observed_run):
    from experiments.bench.speed import train_benchmark

    config = micro_config(peak_flops_per_device=PEAK)
    bench = train_benchmark(config, vocab_size=23, steps=2)
    flops = bench["flops_per_step"]
    assert bench["peak_flops_per_sec"] == PEAK  # one device here
    events = tensorboard_events(os.path.join(observed_run, "tensorboard"))
    perf = {(tag, step): v for tag, step, v in events if tag.startswith("perf/")}
    steps = sorted(s for t, s in perf if t == "perf/mfu")
    assert steps == list(range(5, 41, 5))
    for s in steps:
        want = perf["perf/steps_per_sec", s] * flops / PEAK
        assert perf["perf/mfu", s] == pytest.approx(want, rel=1e-5)
        assert perf["perf/tokens_per_sec_per_device", s] == pytest.approx(perf["perf/tokens_per_sec", s])
    lines = re.findall(
        r"([\d.]+) steps/s .* MFU ([\d.]+)%", open(os.path.join(observed_run, "stderr.txt")).read()
    )
    assert len(lines) == 8
    for rate, mfu in lines:
        assert float(mfu) == pytest.approx(100 * float(rate) * flops / PEAK, abs=0.006 + 0.01 * float(mfu))
    with open(os.path.join(observed_run, "summary.json")) as f:
        summary = json.load(f)
    assert summary["model_flops_per_step"] == flops and summary["peak_flops_per_sec"] == PEAK
    assert 0 < summary["mfu_mean"] < max(perf["perf/mfu", s] for s in steps)
    with open(os.path.join(observed_run, "metrics.jsonl")) as f:
        assert not any("mfu" in line or "per_sec" in line for line in f)  # timing stays out


def _traces(workdir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb")))


@pytest.mark.slow
def test_the_profile_holds_a_trace_and_a_resumed_run_does_not_redo_it(observed_run):
    (trace,) = _traces(observed_run)
    assert os.path.getsize(trace) > 0
    assert glob.glob(os.path.join(os.path.dirname(trace), "*.trace.json.gz"))  # for Perfetto
    overrides = {
        "profile.start_step": 5,
        "profile.num_steps": 3,
        "num_train_steps": 50,
        "log_layer_stats": True,
    }
    result = run_command(train_command(observed_run, **overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 40" in result.stderr and "profiling" not in result.stderr
    assert _traces(observed_run) == [trace]


@pytest.mark.slow
def test_layer_stats_are_written_at_log_steps(observed_run):
    with open(os.path.join(observed_run, "layer_stats.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows][:8] == list(range(5, 41, 5))
    groups = set(rows[0]) - {"step"}
    kinds = {
        "attn_query",
        "attn_key",
        "attn_value",
        "attn_out",
        "mlp_up",
        "mlp_down",
        "attn_norm",
        "mlp_norm",
    }
    assert groups == {f"blocks{i}/{k}" for i in (0, 1) for k in kinds} | {"embed", "final_norm"}
    for r in rows:
        for g in groups:
            assert r[g]["param_norm"] > 0 and r[g]["grad_norm"] > 0 and 0 < r[g]["update_ratio"] < 1
    tags = {tag for tag, _, _ in tensorboard_events(os.path.join(observed_run, "tensorboard"))}
    assert "layers/grad_norm/blocks1/mlp_up" in tags and "layers/update_ratio/embed" in tags


def _reference(run, state, batch) -> dict[str, dict[str, float]]:
    """Gradients and updates outside the step, grouped by hand."""
    model_batch = run.objective.transform(batch, jax.random.fold_in(state.rng, state.step))

    def nll(params):
        model = nnx.merge(run.graphdef, params, state.model_state)
        scores = run.objective.scores(model, model_batch, run.config.mask)
        return scores["nll_sum"] / jnp.maximum(scores["weight_sum"], 1.0)

    grads = jax.jit(jax.grad(nll))(state.params)  # compiled once, not run op by op
    updates, _ = jax.jit(run.tx.update)(grads, state.opt_state, state.params)
    flat = {
        jax.tree_util.keystr(path): tuple(np.asarray(x) for x in leaves)
        for (path, *_), leaves in zip(
            jax.tree_util.tree_leaves_with_path(state.params),
            zip(*(jax.tree.leaves(t) for t in (state.params, grads, updates)), strict=True),
            strict=True,
        )
    }

    def group(prefix: str, layer: int | None) -> dict[str, float]:
        sums = np.zeros(3)
        for name, arrays in flat.items():
            if name.startswith(prefix):
                for j, a in enumerate(arrays):
                    a = a[layer] if layer is not None else a
                    sums[j] += float(np.sum(np.square(a.astype(np.float64))))
        p, g, u = np.sqrt(sums)
        return {"param_norm": p, "grad_norm": g, "update_ratio": u / p}

    scanned = run.config.model.scan_layers
    return {
        "blocks1/attn_query": group(
            "['blocks']['layers']['attn']['query']" if scanned else "['blocks'][1]['attn']['query']",
            1 if scanned else None,
        ),
        "blocks0/mlp_down": group(
            "['blocks']['layers']['mlp']['down']" if scanned else "['blocks'][0]['mlp']['down']",
            0 if scanned else None,
        ),
        "embed": group("['embed']", None),
    }


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_layer_stats_equal_a_reference_and_leave_the_metrics_unchanged(scan, tmp_path):
    overrides = {
        "model.scan_layers": scan,
        "log_every_steps": 1,
        "num_train_steps": 4,
        "optim.warmup_steps": 1,
    }
    with_stats = build_run(micro_config(log_layer_stats=True, **overrides), str(tmp_path), vocab_size=23)
    without = build_run(micro_config(**overrides), str(tmp_path), vocab_size=23)
    batch = next(make_source(micro_config(**overrides), str(tmp_path)).train_iterator())
    state = with_stats.init_state()
    reference = _reference(with_stats, state, batch)
    _, metrics = with_stats.train_step(state, batch)
    _, plain = without.train_step(without.init_state(), batch)
    stats = jax.device_get(metrics.pop("layer_stats"))
    for group, values in reference.items():
        for k, v in values.items():
            assert float(stats[group][k]) == pytest.approx(v, rel=1e-4), (group, k)
    for k in plain:
        np.testing.assert_array_equal(np.asarray(metrics[k]), np.asarray(plain[k]))


@pytest.mark.slow
def test_layer_stats_are_zero_at_steps_that_do_not_log(tmp_path):
    run = build_run(micro_config(log_layer_stats=True), str(tmp_path), vocab_size=23)  # logs every 5
    state = run.init_state()
    rng = np.random.default_rng(0)
    tokens = rng.integers(7, 23, (8, 32)).astype(np.int32)
    batch = {
        "tokens": tokens,
        "segment_ids": np.ones_like(tokens),
        "positions": np.tile(np.arange(32), (8, 1)),
    }
    for step in range(1, 6):
        state, metrics = run.train_step(state, batch)
        norms = jax.device_get(metrics["layer_stats"]["embed"]["param_norm"])
        assert (norms > 0) == (step == 5)


@pytest.mark.slow
def test_samples_appear_in_tensorboard(observed_run):
    events = tensorboard_events(os.path.join(observed_run, "tensorboard"))
    texts = {(tag, step): v for tag, step, v in events if isinstance(v, str)}
    assert {s for t, s in texts if t.startswith("samples/greedy")} == {10, 20, 30, 40}
    greedy = texts["samples/greedy/text_summary", 40].split("\n\n")
    assert len(greedy) == 2 and all(re.fullmatch(r"`<bos>( s\d+)+` → `.*`", line) for line in greedy)
    assert ("samples/sampled/text_summary", 40) in texts


@pytest.mark.slow
def test_a_masked_model_writes_fill_mask_samples(tmp_path):
    from train.observe.samples import EvalSamples

    config = micro_config("mlm")
    run = build_run(config, str(tmp_path))
    state = run.init_state()
    samples = EvalSamples(run.source, run.graphdef, "mlm", "bidirectional", count=3)
    ((tag, text),) = samples(state.params, state.model_state).items()
    assert tag == "samples/fill_mask"
    lines = text.split("\n\n")
    assert len(lines) == 3 and all(line.count(" → ") == 2 for line in lines)  # two masks each


@pytest.mark.slow
def test_an_offline_wandb_run_resumes_under_one_id(tmp_path):
    pytest.importorskip("wandb")
    workdir = str(tmp_path / "run")
    env = {"WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    for steps in (20, 40):
        overrides = {"num_train_steps": steps, "wandb.project": "gptbert-test", "wandb.mode": "offline"}
        result = run_command(train_command(workdir, **overrides), env={**subprocess_env(), **env})
        assert result.returncode == 0, result.stderr[-3000:]
    run_id = open(os.path.join(workdir, "wandb_run_id")).read().strip()
    runs = sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*")))
    assert len(runs) == 2 and all(r.endswith(f"-{run_id}") for r in runs)
    assert all(glob.glob(os.path.join(r, f"run-{run_id}.wandb")) for r in runs)
