"""The accelerator path without an accelerator: the `tiny` step compiled for an H100 (the CUDA
plugin) and for TPU slices (libtpu, one host and four) on this CPU host, with the fused kernels
the target's `auto` picks; their memory, counted FLOPs and bytes and roofline; and the table's
rows (the search for the largest batch: test_batch_search.py; the HLO counts: test_hlo_cost.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import pytest
from conftest import REPO, subprocess_env

import configs
from experiments.bench.aot import measure, targets
from experiments.bench.aot.compile import Compiled, compile_step
from experiments.bench.aot.hlo_cost import KernelCount
from train.devices.chips import CHIPS, chip_of
from train.loop.build import build_run


def test_chips_are_found_by_the_device_kind_jax_reports():
    assert chip_of("TPU v5").name == "v5p" and chip_of("TPU v5 lite").name == "v5e"
    assert chip_of("TPU v6 lite").name == "v6e" and chip_of("NVIDIA H100 80GB HBM3").name == "H100"
    assert chip_of("cpu") is None


def _tiny(objective: str = "clm", **overrides):
    return configs.get_config(objective, "tiny", {"model.dtype": "bfloat16", **overrides})


@pytest.mark.slow
def test_the_tiny_step_compiles_for_an_h100_with_the_fused_kernels_and_the_chunked_loss():
    """The GPU compiler from the CUDA plugin, no GPU: the step a run on an H100 builds ("auto":
    the Pallas flash kernel, forward and backward in each of the four layers). A compile of
    13-26 s on this host, hence the full tier."""
    h100 = targets.compile_target("h100")
    assert (h100.platform, h100.chip.name, len(h100.devices)) == ("gpu", "H100", 1)
    c = compile_step(_tiny(), h100, 512, per_device=8)
    assert c.fits and 0 < c.memory["peak_bytes"] < h100.memory_limit
    assert c.xla_flops == 0 and c.hlo_bytes > 0  # the GPU compiler counts nothing: we do
    assert c.kernels.calls == 2 * 4 and c.kernels.flops > 0


REMAT_SCAN = {"model.remat": "dots", "model.scan_layers": True}


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective,switches", [("mlm", {}), ("prefix_lm", {}), ("hybrid", {}), ("clm", REMAT_SCAN)]
)
def test_every_objective_compiles_for_a_gpu_through_the_kernels(objective, switches):
    """Each objective's mask goes through the kernel: a prefix (prefix LM, hybrid rows) is two
    calls a layer, forward and backward; remat `dots` with scan over layers recomputes the
    forward call inside the loop (counted once per layer by the loop's trip count)."""
    config = _tiny(objective, **switches)
    c = compile_step(config, targets.compile_target("h100"), 512, per_device=4)
    calls_per_layer = {"mlm": 2, "prefix_lm": 4, "hybrid": 4, "clm": 3}[objective]
    assert c.fits and c.kernels.calls == calls_per_layer * config.model.num_layers


TWO_LAYERS = ("--config.model.num_layers=2",)  # the tiny shapes, half the compile


def _aot_command(*flags: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench.aot",
        "--config",
        "configs/gpt.py:tiny",
        *TWO_LAYERS,
        *flags,
    ]
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_tiny_step_compiles_for_a_tpu_slice_and_reports_memory_flops_and_a_roofline():
    """The command line itself (its words, its exit statuses): one process, three calls."""
    pytest.importorskip("libtpu")
    result = _aot_command("--topology", "v5e:2x2", "--per_device_batch", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "InitGoogle" not in result.stderr  # libtpu's noise about the absent TPU host is kept out
    said = [line for line in result.stderr.splitlines() if line.startswith("[aot]")]
    assert len(said) == 1 and said[0].startswith("[aot] v5e:2x2: 8 rows a device: fits: 0.0")
    assert said[0].endswith(" of 16.00 GiB per v5e") or " of 16.00 GiB per v5e (" in said[0]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out["chip"], out["chips"], out["hosts"], out["fits"]) == ("v5e", 4, 1, True)
    assert (out["attention_impl"], out["loss_impl"]) == ("auto", "auto")
    memory = out["memory_per_chip"]
    assert memory["peak_bytes"] >= memory["argument_bytes"] > 0 and out["hbm_bytes"] == 16 * 2**30
    # The splash kernel, forward, dq and dkv in each of the two layers, counted by its formula:
    # with it XLA's count (every op) is close to the model's (matmuls only) and not below it.
    assert out["kernel_calls"] == 3 * 2 and out["kernel_flops_per_chip"] > 0
    assert 1.0 <= out["flops_per_chip"] / out["model_flops_per_chip"] < 1.3
    assert out["bytes_per_chip"] == out["xla_bytes_per_chip"] + out["kernel_bytes_per_chip"]
    # Our own estimate of the bytes (what a GPU row rests on) against XLA's count of them.
    assert 0.8 < out["hlo_bytes_per_chip"] / out["bytes_per_chip"] < 1.5
    assert 0 < out["mfu_bound"] <= out["model_flops_per_chip"] / out["flops_per_chip"]
    bad = _aot_command("--topology", "v9x:2x2")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --topology 'v9x:2x2': use a TPU slice GENERATION:SHAPE with the generation one of "
        "['v4', 'v5e', 'v5p', 'v6e'], or a GPU (a100/h100/h200, optionally :COUNT)"
    ]
    bad = _aot_command("--search_from", "60")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --search_from: a batch of one row or more, given with --search (0: none)"
    ]


def test_a_step_built_for_a_tpu_slice_on_a_cpu_host_makes_the_tpus_choices():
    pytest.importorskip("libtpu")
    config = configs.get_config("clm", "tiny")
    assert (config.model.attention_impl, config.model.loss_impl) == ("auto", "auto")
    tpu = build_run(config, "", vocab_size=512, devices=targets.tpu_devices("v5e:2x2"))
    cpu = build_run(config, "", vocab_size=512)
    gpu = build_run(config, "", vocab_size=512, devices=targets.compile_target("h100:8").devices)
    runs = (tpu, cpu, gpu)
    assert [r.model_config.attention_impl for r in runs] == ["splash", "einsum", "pallas_gpu"]
    assert [r.model_config.loss_impl for r in runs] == ["chunked", "full", "chunked"]
    assert gpu.mesh.devices.size == 8


# Compiles for a v5e slice: twice through `compile_uncached`, then once as JAX would alone.
_CACHE_PROBE = """
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from experiments.bench.aot import compile, targets
devices = targets.tpu_devices("v5e:2x2")
sharding = NamedSharding(Mesh(devices, ("d",)), PartitionSpec("d"))
x = jax.ShapeDtypeStruct((8, 128), jnp.float32, sharding=sharding)
for _ in range(2):
    compile.compile_uncached(jax.jit(lambda a: jnp.tanh(a) * 3.0).lower(x))
jax.jit(lambda a: jnp.tanh(a) * 5.0).lower(x).compile()
"""


@pytest.mark.slow
def test_a_program_for_a_tpu_slice_stays_out_of_the_persistent_cache(tmp_path):
    """The CPU client cannot load a TPU program back from the persistent compilation cache (a
    later compile of it warned and compiled again), so none is written there; with every compile
    written (threshold 0), only the compile made without `compile_uncached` is. Its own process:
    the cache is configured when JAX starts."""
    pytest.importorskip("libtpu")
    env = {**subprocess_env(), "JAX_COMPILATION_CACHE_DIR": str(tmp_path)}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    result = subprocess.run(
        [sys.executable, "-c", _CACHE_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Error reading persistent compilation cache" not in result.stderr
    assert len(list(tmp_path.glob("jit__lambda-*-cache"))) == 1


@pytest.mark.slow
def test_fsdp_over_a_four_host_slice_divides_the_state_and_needs_no_more_memory():
    """FSDP over the 16 chips of four hosts compiles (the splash kernel on each chip's rows),
    each chip holds a sliver of the sharded state, and the step needs no more memory per chip
    than with the state replicated, also with GPT-2's vocabulary (50257, prime to 16: its
    embedding split along the features instead had every chip hold partial logits of the whole
    batch)."""
    pytest.importorskip("libtpu")
    target = targets.compile_target("v5e:4x4")
    assert len(target.devices) == 16 and len({d.process_index for d in target.devices}) == 4
    memory = {}
    for fsdp in (1, 16):  # one block: the shardings are the same in every block, at half the compile
        config = configs.get_config("clm", "tiny", {"mesh.fsdp": fsdp, "model.num_layers": 1})
        compiled = compile_step(config, target, 50257, per_device=4)
        assert compiled.fits and compiled.kernels.calls == 3
        memory[fsdp] = compiled.memory
    abstract = build_run(config, "", vocab_size=50257, devices=target.devices).abstract_state
    whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    embedding = 3 * 50257 * 128 * 4  # the table and its two Adam moments, kept whole
    assert memory[16]["argument_bytes"] < embedding + (whole - embedding) / 8
    assert memory[16]["peak_bytes"] <= memory[1]["peak_bytes"]


def _row(**fields):
    from experiments.bench.aot.table import COLUMNS

    row = dict.fromkeys(COLUMNS, "")
    row.update(model="gpt2", topology="v5e:4x4", chip="v5e", chips=16, hosts=4, fsdp=1, remat="dots")
    row.update(step="materialised", kernel_calls=0, compile_s_at_8=46, largest_batch=31)
    row.update(gib_at_8=5.8, state_gib_at_8=1.4, temp_gib_at_8=4.4, gib_at_largest=15.2, roofline_ms=500.0)
    row.update(bound_by="memory", mfu_bound=0.3, tokens_per_s_per_chip_bound=60000, xla_over_model_flops=1.25)
    return {**row, **fields}


def test_the_table_sets_each_step_beside_its_twin_says_how_many_rows_are_done_and_plots_them(tmp_path):
    from experiments.bench.aot import report

    before = _row()
    after = _row(step="fused", kernel_calls=36, largest_batch=62, gib_at_8=3.1, temp_gib_at_8=1.7)
    after.update(mfu_bound=0.45, hlo_over_xla_bytes=1.1)
    refused = _row(fsdp=16, remat="none", gib_at_8="", largest_batch=4, xla_over_model_flops=0.62)
    gpu = _row(topology="h100", chip="H100", chips=1, hosts=1, step="fused", xla_over_model_flops="")
    path = report.write(
        [after, refused, before, gpu], str(tmp_path), "python -m experiments.bench.aot.table", ("gpt2",), 132
    )
    md = open(path).read()
    assert "rows: 4 of 132 (each search takes minutes; the same command adds the rest)" in md
    assert (
        "| gpt2 | v5e:4x4 (16 / 4) | 1 | dots | 5.80 → 3.10 | 4.40 → 1.70 | 31 → 62 | 0.30 → 0.45 "
        "| memory | 36 |" in md
    )
    assert (
        "| gpt2 | v5e:4x4 (16 / 4) | 1 | dots | materialised | 5.80 (1.40 + 4.40) | 31 | 15.20 | 500.0 |"
        in md
    )
    assert "| gpt2 | v5e:4x4 (16 / 4) | 16 | none | materialised | does not fit | 4 |" in md
    assert "| 0.30 | 0.80 | 60,000 | 0 |" in md  # the model's FLOPs over the counted 1.25x
    assert "| 0.30 | 1.00* | 60,000 | 0 |" in md  # fewer counted: starred, not above 1
    assert "| 0.45 | 0.80 | 60,000 | 36 | 1.10 |" in md
    assert "| gpt2 | h100 (1 / 1) | 1 | dots | fused |" in md  # no twin yet: in the full table only
    assert md.count("| h100 (1 / 1) |") == 1
    assert (tmp_path / "aot.png").stat().st_size > 10_000


def test_a_row_read_back_from_the_csv_is_known_as_done_and_the_plan_orders_what_is_left(tmp_path):
    from experiments.bench.aot import table

    row = {"model": "gpt2", "topology": "v5e:4x4", "fsdp": 1, "remat": "dots", "step": "fused"}
    path = str(tmp_path / "aot.csv")
    table.write_csv([row, {**row, "fsdp": 16}], path)
    keys = [table.key(r) for r in table.read_rows(path)]
    assert keys == [
        ("gpt2", "v5e:4x4", "False", "dots", "fused"),
        ("gpt2", "v5e:4x4", "True", "dots", "fused"),
    ]
    plan = table.todo(["gpt2"], ["v5e:4x4", "h100"], ["materialised", "fused"])
    assert len(plan) == 2 * 2 * 2 + 2 * 2  # a GPU target has no sharded rows
    assert plan[:4] == [
        ("gpt2", "v5e:4x4", False, "none", "fused"),
        ("gpt2", "v5e:4x4", False, "dots", "fused"),
        ("gpt2", "h100", False, "none", "fused"),
        ("gpt2", "h100", False, "dots", "fused"),
    ]
    assert plan[4:6] == [
        ("gpt2", "h100", False, "none", "materialised"),
        ("gpt2", "h100", False, "dots", "materialised"),
    ]


def test_the_roofline_counts_the_kernels_and_the_model_flops_where_fewer_are_counted():
    chip = CHIPS["TPU v5 lite"]
    counted = Compiled(8, True, 45.0, {}, xla_flops=2e12, xla_bytes=1e9)
    assert measure.roofline(counted, chip, 1e12, 8192)["bound_by"] == "compute"
    assert measure.roofline(counted, chip, 1e12, 8192)["roofline_seconds"] == 2e12 / chip.bf16_flops
    with_kernels = Compiled(8, True, 45.0, {}, 2e12, 1e9, kernels=KernelCount(24, 1e12, 2e11))
    assert measure.counted(with_kernels) == (3e12, 1e9 + 2e11)
    # With the state sharded, XLA's cost analysis leaves out the matmuls the TPU compiler moved
    # into collective fusions: the bound takes the model's count, never less work than it has.
    undercounted = Compiled(8, True, 45.0, {}, xla_flops=0.5e12, xla_bytes=1e9)
    bound = measure.roofline(undercounted, chip, 1e12, 8192)
    assert bound["roofline_seconds"] == 1e12 / chip.bf16_flops
    assert bound["mfu_bound"] == pytest.approx(1.0)
    # The GPU compiler counts nothing: the model's FLOPs and our bytes.
    gpu = Compiled(8, True, 45.0, {}, 0.0, 0.0, kernels=KernelCount(8, 1e11, 1e9), hlo_bytes=3e9)
    assert measure.counted(gpu) == (1e11, 3e9)
