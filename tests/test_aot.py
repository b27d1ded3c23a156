"""The accelerator path without an accelerator: every preset's train step lowered for CUDA
(`jax.export`), the `tiny` step compiled for TPU slices by libtpu on this CPU host (one host and
four), its memory and roofline figures, and the table's rows (the search for the largest batch:
test_batch_search.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import REPO, subprocess_env

import configs
from experiments.bench import tpu_compile
from experiments.bench.tpu_compile import Compiled
from train.devices.chips import CHIPS, chip_of
from train.loop.build import build_run


def test_chips_are_found_by_the_device_kind_jax_reports():
    assert chip_of("TPU v5").name == "v5p" and chip_of("TPU v5 lite").name == "v5e"
    assert chip_of("TPU v6 lite").name == "v6e" and chip_of("NVIDIA H100 80GB HBM3").name == "H100"
    assert chip_of("cpu") is None


def _abstract_batch(config, run) -> dict:
    shape = (config.batch_size, config.seq_len)
    return {
        k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=run.data_sharding)
        for k in ("tokens", "segment_ids", "positions")
    }


def _lower_for_cuda(objective: str, variant: str, **overrides):
    # The step a run on a GPU builds (its "auto" attention), built on this CPU.
    config = configs.get_config(objective, variant, {"batch_size": 8, **overrides})
    run = build_run(config, "", vocab_size=512, platform="gpu")
    exported = jax.export.export(run.train_step, platforms=["cuda"])(
        run.abstract_state, _abstract_batch(config, run)
    )
    return config, run, exported


def test_the_tiny_train_step_lowers_for_cuda():
    config, run, exported = _lower_for_cuda("clm", "tiny")
    assert exported.platforms == ("cuda",)
    # The same program: the state goes in and comes out with its shapes (donated, updated).
    state_avals = [(a.shape, a.dtype) for a in jax.tree.leaves(run.abstract_state)]
    assert [(a.shape, a.dtype) for a in exported.in_avals[: len(state_avals)]] == state_avals
    assert [(a.shape, a.dtype) for a in exported.out_avals[: len(state_avals)]] == state_avals


PRESETS = [
    *[("clm", v) for v in ("tiny", "small", "base", "gpt2", "gpt2_tiny")],
    *[("mlm", v) for v in ("tiny", "small", "base", "bert_base", "bert_tiny")],
    *[(o, "tiny") for o in ("prefix_lm", "hybrid")],
]


REMAT_SCAN = {"model.remat": "dots", "model.scan_layers": True}


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective,variant,switches",
    [(o, v, {}) for o, v in PRESETS] + [("clm", "gpt2", REMAT_SCAN), ("mlm", "bert_base", REMAT_SCAN)],
)
def test_every_preset_lowers_for_cuda_in_bf16(objective, variant, switches):
    """`jax.export` lowers for CUDA without a GPU; `attention_impl="cudnn"` cannot be lowered so
    (JAX looks for cuDNN while it traces), so the default `xla` attention is what is checked."""
    _, _, exported = _lower_for_cuda(objective, variant, **{"model.dtype": "bfloat16", **switches})
    assert exported.platforms == ("cuda",)
    assert "bf16" in exported.mlir_module()  # the matmuls run in bf16


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
    pytest.importorskip("libtpu")
    result = _aot_command("--topology", "v5e:2x2", "--per_device_batch", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "InitGoogle" not in result.stderr  # libtpu's noise about the absent TPU host is kept out
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out["chip"], out["chips"], out["hosts"], out["fits"]) == ("v5e", 4, 1, True)
    memory = out["memory_per_chip"]
    assert memory["peak_bytes"] >= memory["argument_bytes"] > 0 and out["hbm_bytes"] == 16 * 2**30
    # XLA counts every op, the model count only matmuls: close, and XLA's not below it.
    assert 1.0 <= out["xla_flops_per_chip"] / out["model_flops_per_chip"] < 1.3
    assert 0 < out["mfu_bound"] <= out["model_flops_per_chip"] / out["xla_flops_per_chip"]
    bad = _aot_command("--topology", "v9x:2x2")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --topology 'v9x:2x2': the generation must be one of ['v4', 'v5e', 'v5p', 'v6e']"
    ]
    bad = _aot_command("--search_from", "60")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --search_from: a batch of one row or more, given with --search (0: none)"
    ]


def test_a_step_built_for_a_tpu_slice_on_a_cpu_host_makes_the_tpus_choices():
    pytest.importorskip("libtpu")
    from train.devices.platform import skip_absent_accelerators

    skip_absent_accelerators()
    config = configs.get_config("clm", "tiny")
    assert config.model.attention_impl == "auto"
    tpu = build_run(config, "", vocab_size=512, devices=tpu_compile.topology_devices("v5e:2x2"))
    cpu = build_run(config, "", vocab_size=512)
    gpu = build_run(config, "", vocab_size=512, platform="gpu")
    runs = (tpu, cpu, gpu)
    assert [r.model_config.attention_impl for r in runs] == ["splash", "einsum", "pallas_gpu"]


# Compiles for a v5e slice: twice through `compile_uncached`, then once as JAX would alone.
_CACHE_PROBE = """
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from experiments.bench import tpu_compile
devices = tpu_compile.topology_devices("v5e:2x2")
sharding = NamedSharding(Mesh(devices, ("d",)), PartitionSpec("d"))
x = jax.ShapeDtypeStruct((8, 128), jnp.float32, sharding=sharding)
for _ in range(2):
    tpu_compile.compile_uncached(jax.jit(lambda a: jnp.tanh(a) * 3.0).lower(x))
jax.jit(lambda a: jnp.tanh(a) * 5.0).lower(x).compile()
"""


@pytest.mark.slow
def test_a_program_for_a_tpu_slice_stays_out_of_the_persistent_cache(tmp_path):
    """The CPU client cannot load a TPU program back from the persistent compilation cache (a
    later compile of it warned and compiled again), so none is written there; with every compile
    written (threshold 0), only the compile made without `compile_uncached` is."""
    pytest.importorskip("libtpu")
    from train.devices.platform import skip_absent_accelerators

    skip_absent_accelerators()
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
    """FSDP over the 16 chips of four hosts compiles, each chip holds a sliver of the sharded
    state, and the step needs no more memory per chip than with the state replicated, also with
    GPT-2's vocabulary (50257, prime to 16: its embedding split along the features instead had
    every chip hold partial logits of the whole batch)."""
    pytest.importorskip("libtpu")
    from train.devices.platform import skip_absent_accelerators

    skip_absent_accelerators()
    devices = tpu_compile.topology_devices("v5e:4x4")
    assert len(devices) == 16 and len({d.process_index for d in devices}) == 4
    memory = {}
    for fsdp in (1, 16):  # one block: the shardings are the same in every block, at half the compile
        config = configs.get_config("clm", "tiny", {"mesh.fsdp": fsdp, "model.num_layers": 1})
        compiled = tpu_compile.compile_step(config, devices, 50257, per_device=4)
        assert compiled.fits
        memory[fsdp] = compiled.memory
    abstract = build_run(config, "", vocab_size=50257, devices=devices).abstract_state
    whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    embedding = 3 * 50257 * 128 * 4  # the table and its two Adam moments, kept whole
    assert memory[16]["argument_bytes"] < embedding + (whole - embedding) / 8
    assert memory[16]["peak_bytes"] <= memory[1]["peak_bytes"]


def test_the_table_says_how_many_of_its_rows_are_done_and_plots_them(tmp_path):
    from experiments.bench import aot_report
    from experiments.bench.aot_table import COLUMNS

    done = dict.fromkeys(COLUMNS, "")
    done.update(model="gpt2", topology="v5e:4x4", chip="v5e", chips=16, hosts=4, fsdp=1, remat="dots")
    done.update(gib_at_8=5.8, state_gib_at_8=1.4, temp_gib_at_8=4.4, compile_s_at_8=46, largest_batch=31)
    done.update(gib_at_largest=15.2, roofline_ms=500.0, bound_by="memory", mfu_bound=0.3)
    done.update(tokens_per_s_per_chip_bound=60000, compile_s_at_8=46, xla_over_model_flops=1.25)
    refused = {**done, "fsdp": 16, "remat": "none", "gib_at_8": "", "largest_batch": 4}
    refused.update(xla_over_model_flops=0.62)
    path = aot_report.write(
        [done, refused], str(tmp_path), "python -m experiments.bench.aot_table", ("gpt2",), 48
    )
    md = open(path).read()
    assert "rows: 2 of 48 (each search takes minutes; the same command adds the rest)" in md
    assert (
        "| gpt2 | v5e:4x4 (16 / 4) | 1 | dots | 5.80 (1.40 + 4.40) | 31 | 15.20 | 500.0 | memory | 0.30 |"
        in md
    )
    assert "| gpt2 | v5e:4x4 (16 / 4) | 16 | none | does not fit | 4 |" in md
    assert "| 0.30 | 0.80 | 60,000 |" in md  # the model's FLOPs over XLA's 1.25x
    assert "| 0.30 | 1.00* | 60,000 |" in md  # XLA counted fewer: starred, not above 1
    assert (tmp_path / "tpu_aot.png").stat().st_size > 10_000


def test_a_row_read_back_from_the_csv_is_known_as_done(tmp_path):
    from experiments.bench import aot_table

    row = {"model": "gpt2", "topology": "v5e:4x4", "fsdp": 1, "remat": "dots"}
    path = str(tmp_path / "tpu_aot.csv")
    aot_table.write_csv([row, {**row, "fsdp": 16}], path)
    keys = [aot_table.key(r) for r in aot_table.read_rows(path)]
    assert keys == [("gpt2", "v5e:4x4", "False", "dots"), ("gpt2", "v5e:4x4", "True", "dots")]


def test_the_roofline_counts_the_model_flops_where_xla_counts_fewer():
    chip = CHIPS["TPU v5 lite"]
    counted = Compiled(8, True, 45.0, {}, xla_flops=2e12, xla_bytes=1e9)
    assert tpu_compile.roofline(counted, chip, 1e12, 8192)["bound_by"] == "compute"
    assert tpu_compile.roofline(counted, chip, 1e12, 8192)["roofline_seconds"] == 2e12 / chip.bf16_flops
    # With the state sharded, XLA's cost analysis leaves out the matmuls the TPU compiler moved
    # into collective fusions: the bound takes the model's count, never less work than it has.
    undercounted = Compiled(8, True, 45.0, {}, xla_flops=0.5e12, xla_bytes=1e9)
    bound = tpu_compile.roofline(undercounted, chip, 1e12, 8192)
    assert bound["roofline_seconds"] == 1e12 / chip.bf16_flops
    assert bound["mfu_bound"] == pytest.approx(1.0)
