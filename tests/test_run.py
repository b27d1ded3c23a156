"""End-to-end runs of `python -m train.main` as a user runs it: outputs, bad input, kill and resume."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, device_env, subprocess_env, train_command

pytestmark = pytest.mark.slow


def _run(cmd, env=None):
    return subprocess.run(
        cmd, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True, timeout=600
    )


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return f.read()


@pytest.fixture(scope="module")
def reference(micro_run, micro_bert_run):
    """One uninterrupted run per objective, to compare resumed runs against (the shared ones)."""
    return {"clm": micro_run, "mlm": micro_bert_run}


def test_the_tensorboard_command_is_installed_and_lists_the_runs_tags(micro_run):
    """`tensorboard --logdir WORKDIR` (docs/observability.md) works after the README's install:
    TensorBoard's own reader finds the run's scalars."""
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    result = _run([tensorboard, "--inspect", "--logdir", micro_run])
    assert result.returncode == 0, result.stderr[-3000:]
    for tag in ("train/loss", "eval/loss", "eval/captured", "perf/mfu", "perf/tokens_per_sec"):
        assert f"   {tag}\n" in result.stdout


def test_a_finished_run_says_where_its_results_are_and_what_to_run_next(micro_run):
    printed = open(f"{micro_run}.stderr.txt").read()
    assert f"done: step 40 in {micro_run}; final eval " in printed
    for line in (
        f"summary:     {micro_run}/summary.json",
        f"checkpoint:  {micro_run}/checkpoints/40",
        f"python -m experiments.tools.sample --workdir {micro_run} --prompt",
    ):
        assert line in printed
    assert "train.hf.export" not in printed  # a rotary run does not export


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_run_writes_config_metrics_tensorboard_and_checkpoints(reference, objective):
    workdir = reference[objective]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["objective"] == objective and config["resolved"]["vocab_size"] == 7 + 16
    rows = [json.loads(line) for line in _metrics(workdir).splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    for key in ("loss", "oracle_loss", "unigram_loss", "gap", "captured"):
        assert all(key in r for r in evals)
    last = evals[-1]
    assert last["gap"] == pytest.approx(last["loss"] / last["oracle_loss"] - 1)
    assert last["captured"] == pytest.approx(
        (last["unigram_loss"] - last["loss"]) / (last["unigram_loss"] - last["oracle_loss"])
    )
    assert evals[-1]["loss"] < evals[0]["loss"]
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "30", "40"]
    assert json.load(open(os.path.join(workdir, "summary.json")))["final_step"] == 40


def _kill_when(proc, workdir, ready) -> bool:
    """SIGKILLs `proc` as soon as `ready(checkpoint_names)` holds; False if it ended first."""
    ckpt = os.path.join(workdir, "checkpoints")
    while proc.poll() is None:
        names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
        if ready(names):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    return False


def test_text_runs_report_bits_per_byte_and_masked_loss(micro_text_runs):
    for objective in ("clm", "mlm"):
        rows = [json.loads(line) for line in _metrics(micro_text_runs[objective]).splitlines()]
        evals = [r for r in rows if r["split"] == "eval"]
        assert [r["step"] for r in evals] == [10, 20, 30, 40]
        assert evals[-1]["loss"] < evals[0]["loss"]
        assert ("bits_per_byte" in evals[-1]) == (objective == "clm")
        assert "captured" not in evals[-1]
        assert os.path.exists(os.path.join(micro_text_runs[objective], "tokenizer.model"))
    with (
        open(os.path.join(micro_text_runs["clm"], "tokenizer.model"), "rb") as a,
        open(os.path.join(micro_text_runs["mlm"], "tokenizer.model"), "rb") as b,
    ):
        assert a.read() == b.read()  # GPT and BERT share one tokenizer


# Each objective and each data source once: the masked LM's per-step masks and the HMM stream's
# position (mlm on hmm), the text stream's position (clm on text).
@pytest.mark.parametrize("objective,dataset", [("mlm", "hmm"), ("clm", "text")])
def test_sigkill_then_same_command_ends_bit_identical(
    reference, micro_text_runs, objective, dataset, tmp_path
):
    """Killed while a checkpoint is being written, rerun, killed again after one, rerun."""
    workdir = str(tmp_path / "run")
    overrides = micro_text_runs["overrides"] if dataset == "text" else {}
    cmd = train_command(workdir, objective, **overrides)
    reference = {"clm": micro_text_runs["clm"]} if dataset == "text" else reference
    mid_write = lambda names: any("tmp" in n for n in names)  # noqa: E731
    after_20 = lambda names: "20" in names  # noqa: E731
    for ready in (mid_write, after_20):
        # A checkpoint write can finish between two polls; then the run is started over (a
        # fresh workdir) rather than the test failing on timing. Three misses is a real failure.
        for _ in range(3):
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if _kill_when(proc, workdir, ready):
                break
            shutil.rmtree(workdir)
        assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed, three times"
    result = _run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step" in result.stderr
    assert _metrics(workdir) == _metrics(reference[objective])
    final = json.load(open(os.path.join(workdir, "summary.json")))["eval"]
    assert final == json.load(open(os.path.join(reference[objective], "summary.json")))["eval"]


def test_half_written_checkpoint_is_never_loaded(reference, tmp_path):
    """A step folder left mid-write (Orbax's tmp name, truncated files) is skipped and cleaned."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference["clm"], workdir)
    ckpt = os.path.join(workdir, "checkpoints")
    partial = os.path.join(ckpt, "30.orbax-checkpoint-tmp-1234")
    os.rename(os.path.join(ckpt, "30"), partial)
    shutil.rmtree(os.path.join(ckpt, "40"))
    for path in glob.glob(os.path.join(partial, "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    result = _run(train_command(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 20" in result.stderr
    assert not os.path.exists(partial)
    assert _metrics(workdir) == _metrics(reference["clm"])


def test_checkpoint_of_another_model_is_refused_by_field(reference, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference["clm"], workdir)
    before = _metrics(workdir)
    result = _run(train_command(workdir, **{"model.d_model": 64, "model.mlp_dim": 128}))
    assert result.returncode == 2
    assert "model.d_model: 32 in the checkpoint, 64 now" in result.stderr
    assert _metrics(workdir) == before  # nothing the earlier run wrote is lost


@pytest.mark.parametrize(
    "override,field",
    [
        ({"model.num_heads": 3}, "model.num_heads"),
        ({"model.max_len": 16}, "model.max_len"),
        ({"mlm.rate": 1.5}, "mlm.rate"),
        ({"dataset": "nope"}, "dataset"),
    ],
)
def test_bad_config_exits_nonzero_naming_the_field_before_compiling(override, field, tmp_path):
    workdir = str(tmp_path / "run")
    result = _run(train_command(workdir, "mlm", **override))
    assert result.returncode != 0
    assert field in result.stderr
    assert "compiled" not in result.stderr
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_unknown_variant_is_an_error(tmp_path):
    cmd = train_command(str(tmp_path / "run"))
    cmd[3] = "--config=configs/gpt.py:huge"
    result = _run(cmd)
    assert result.returncode != 0
    assert "unknown config variant 'huge'" in result.stderr


def test_data_parallel_over_two_devices_matches_one_device(reference, two_device_run):
    """The same run over a 2-device mesh: same losses up to float reduction order."""
    workdir = two_device_run
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["devices"] == 2
    one = [json.loads(line) for line in _metrics(reference["clm"]).splitlines()]
    two = [json.loads(line) for line in _metrics(workdir).splitlines()]
    assert [(r["step"], r["split"]) for r in one] == [(r["step"], r["split"]) for r in two]
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)


@pytest.mark.parametrize("fsdp", [2, 4])
def test_fsdp_over_four_devices_matches_one_device_and_resumes(reference, four_device_run, fsdp, tmp_path):
    """Params and optimizer state sharded over `fsdp` (batch over data x fsdp): same losses."""
    workdir = str(tmp_path / "run")
    env = device_env(4)
    cmd = train_command(workdir, **{"mesh.fsdp": fsdp})
    if fsdp == 2:  # the shared 4-device run is this command's
        shutil.copytree(four_device_run, workdir)
    else:
        result = _run(cmd, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["mesh"] == {"data": 4 // fsdp, "fsdp": fsdp}
    # Every matrix but the tiny embedding is split: each device holds well under the whole.
    assert summary["state_bytes_per_device"] < (0.5 if fsdp == 4 else 0.75) * summary["state_bytes"]
    one = [json.loads(line) for line in _metrics(reference["clm"]).splitlines()]
    sharded = _metrics(workdir)
    for a, b in zip(one, [json.loads(line) for line in sharded.splitlines()], strict=True):
        assert (a["step"], a["split"]) == (b["step"], b["split"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    # Resume from a sharded checkpoint: drop the last two, rerun, get the same file.
    for step in ("30", "40"):
        shutil.rmtree(os.path.join(workdir, "checkpoints", step))
    result = _run(cmd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 20" in result.stderr
    assert _metrics(workdir) == sharded


def test_a_mesh_that_does_not_fit_the_devices_is_named(tmp_path):
    env = device_env(4)
    result = _run(train_command(str(tmp_path / "run"), **{"mesh.fsdp": 3}), env=env)
    assert (
        result.returncode == 2 and "mesh.fsdp=3 must be a positive divisor of the 4 devices" in result.stderr
    )


def test_compilation_cache_and_step_memory_are_recorded(tmp_path):
    workdir, cache = str(tmp_path / "run"), str(tmp_path / "xla_cache")
    result = _run(train_command(workdir, num_train_steps=10, compilation_cache_dir=cache))
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(cache)  # compiled executables were written for the next run
    memory = json.load(open(os.path.join(workdir, "summary.json")))["step_memory"]
    assert memory["peak_bytes"] >= memory["argument_bytes"] > 0
    assert "GiB per device" in result.stderr


def test_a_hand_edited_config_json_is_named_at_resume_as_a_record_not_an_input(micro_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(micro_run, workdir)
    path = os.path.join(workdir, "config.json")
    record = json.load(open(path))
    record["optim"]["learning_rate"], record["seed"] = 0.5, 7
    json.dump(record, open(path, "w"))
    result = _run(train_command(workdir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{path} is a record of the run, not an input" in result.stderr
    assert "optim.learning_rate: 0.5 -> 0.003; seed: 7 -> 0" in result.stderr
    assert json.load(open(path))["seed"] == 0  # rewritten to what ran
    again = _run(train_command(workdir))
    assert again.returncode == 0 and "is a record of the run" not in again.stderr
