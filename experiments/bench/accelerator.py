"""GPT-2 124M and BERT-base in bf16 on the accelerator at hand: one command, a table (md + csv).

    python -m experiments.bench.accelerator --out experiments/results        # on a GPU or a TPU
    python -m experiments.bench.accelerator --out /tmp/acc --shapes tiny --vocab_size 512 \
        --per_device_batch 2                                                  # anywhere (the tests)

Rows: `configs/gpt.py:gpt2` and `configs/bert.py:bert_base` (`--shapes tiny`: `gpt2_tiny` and
`bert_tiny`, the same architectures at the `tiny` shapes) in bf16, remat off and `dots`, each
step of `STEPS`: "materialised" (attention written out by XLA, the full logits in the loss),
"fused" (the platform's `auto` attention, a fused kernel on TPU and GPU, and the chunked loss)
and on a GPU "cudnn" (cuDNN's attention, which writes out the packed rows' mask, and the chunked
loss); at `PER_DEVICE_BATCH` rows per device (the largest batch that fits a 16 GiB v5e chip with
the materialised step and remat off in experiments/results/aot.md, so every row fits every chip
of that table and any GPU of 16 GB or more). Each row is `python -m experiments.bench`'s
measurement of the step as the trainer builds it (experiments/bench/speed.py): tokens/s, MFU
against the chip's data-sheet bf16 peak, the step's memory per device, compile time; and beside
it the estimate the ahead-of-time table makes of the same compiled step (XLA's cost analysis,
the fused kernels by their formula, the program's own bytes where XLA gives none:
experiments/bench/aot/measure.py): the roofline step time at the chip's peak and HBM bandwidth
(train/devices/chips.py) and the MFU it bounds, so measured and estimated read side by side. Writes
OUT/accelerator_CHIP.md and .csv (CHIP: v5e, H200, ..., or the platform where the chip is not in
the table, such as cpu).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Any

from experiments.common import commit_stamp, markdown_table

# model -> (objective, variant, tiny variant, vocabulary)
MODELS: dict[str, tuple[str, str, str, int]] = {
    "gpt2": ("clm", "gpt2", "gpt2_tiny", 50257),
    "bert_base": ("mlm", "bert_base", "bert_tiny", 30522),
}
PER_DEVICE_BATCH = {"gpt2": 16, "bert_base": 32}
STEPS: dict[str, dict[str, str]] = {
    "materialised": {"model.attention_impl": "xla", "model.loss_impl": "full"},
    "fused": {"model.attention_impl": "auto", "model.loss_impl": "chunked"},
    "cudnn": {"model.attention_impl": "cudnn", "model.loss_impl": "chunked"},  # GPU only
}
COLUMNS = (
    *("model", "step", "attention", "loss", "remat", "per_device_batch", "seq_len"),
    *("tokens_per_s_per_device", "mfu", "kernel_calls"),
    *("step_ms", "step_ms_iqr", "compile_s", "memory_gib", "roofline_ms", "mfu_bound", "device_kind"),
)


def measure_row(model: str, step: str, remat: str, args: argparse.Namespace) -> dict[str, Any]:
    """One row: the benchmark of `model` with that step and remat, and its roofline."""
    import jax

    import configs
    from experiments.bench.speed import train_benchmark

    objective, variant, tiny, vocab = MODELS[model]
    per_device = args.per_device_batch or PER_DEVICE_BATCH[model]
    overrides = {"model.dtype": "bfloat16", "model.remat": remat, **STEPS[step]}
    overrides["batch_size"] = per_device * jax.device_count()
    config = configs.get_config(objective, tiny if args.shapes == "tiny" else variant, overrides)
    result = train_benchmark(config, args.vocab_size or vocab, args.steps)
    row = {
        "model": model,
        "step": step,
        "attention": result["attention_impl"],
        "loss": result["loss_impl"],
        "kernel_calls": result["kernel_calls"],
        "remat": remat,
        "per_device_batch": per_device,
        "seq_len": config.seq_len,
        "tokens_per_s_per_device": result["tokens_per_sec"] / result["devices"],
        "mfu": result["mfu"],
        "step_ms": 1e3 * result["step_seconds_median"],
        "step_ms_iqr": 1e3 * result["step_seconds_iqr"],
        "compile_s": result["compile_seconds"],
        "memory_gib": result["step_memory"].get("peak_bytes", 0) / 2**30,
        "device_kind": result["device_kind"],
    }
    return {**row, **estimate(result, per_device * config.seq_len)}


def estimate(result: dict[str, Any], tokens_per_device: int) -> dict[str, float]:
    """The ahead-of-time table's roofline of the measured step on the chip it ran on (nothing
    where the chip is not in train/devices/chips.py)."""
    from experiments.bench.aot.compile import Compiled
    from experiments.bench.aot.hlo_cost import KernelCount, Repeats
    from experiments.bench.aot.measure import roofline
    from train.devices.chips import chip_of

    chip = chip_of(result["device_kind"])
    if chip is None:
        return {}
    kernels = KernelCount(
        result["kernel_calls"], result["kernel_flops_per_device"], result["kernel_bytes_per_device"]
    )
    compiled = Compiled(
        0,
        True,
        0.0,
        {},
        result.get("xla_flops_per_device", 0.0),
        result.get("xla_bytes_per_device", 0.0),
        kernels=kernels,
        repeats=Repeats(result["loop_repeat_flops_per_device"], result["loop_repeat_bytes_per_device"]),
        hlo_bytes=result["hlo_bytes_per_device"],
    )
    bound = roofline(compiled, chip, result["flops_per_step"] / result["devices"], tokens_per_device)
    return {"roofline_ms": 1e3 * bound["roofline_seconds"], "mfu_bound": bound["mfu_bound"]}


def write(rows: list[dict[str, Any]], out: str, command: str, name: str) -> str:
    """OUT/accelerator_NAME.csv and .md; returns the markdown's path."""
    base = os.path.join(out, f"accelerator_{name}")
    with open(f"{base}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)

    def num(value: Any, fmt: str) -> str:
        return "" if value in ("", None) else format(value, fmt)

    header = ("model", "step (attention, loss)", "remat", "rows per device x tokens", "tokens/s per device")
    header += (
        "MFU",
        "step (ms, median ± IQR)",
        "compile (s)",
        "GiB per device",
        "roofline (ms)",
        "MFU bound",
    )
    cells = [
        [r["model"], f"{r['step']} ({r['attention']}, {r['loss']})", r["remat"]]
        + [f"{r['per_device_batch']} x {r['seq_len']}"]
        + [num(r["tokens_per_s_per_device"], ",.0f"), num(r["mfu"], ".1%")]
        + [
            f"{r['step_ms']:.1f} ± {r['step_ms_iqr']:.1f}",
            num(r["compile_s"], ".1f"),
            num(r["memory_gib"], ".2f"),
        ]
        + [num(r.get("roofline_ms"), ".1f"), num(r.get("mfu_bound"), ".1%")]
        for r in rows
    ]
    lines = [
        f"# GPT-2 and BERT-base in bf16 on {rows[0]['device_kind']}",
        "",
        f"command: `{command}`  ",
        f"commit: {commit_stamp()}",
        "",
        "MFU: model FLOPs (train/observe/flops.py) per second over the chip's data-sheet bf16 peak. "
        "Roofline and MFU bound: the estimate of experiments/results/aot.md for this chip, from the "
        "same compiled step (XLA's cost analysis, the fused kernels by their formula, the program's "
        "own bytes where XLA gives none; blank where the chip is not in train/devices/chips.py).",
        "",
        *markdown_table(header, cells),
        "",
    ]
    with open(f"{base}.md", "w") as f:
        f.write("\n".join(lines))
    return f"{base}.md"


def main(argv: list[str] | None = None) -> None:
    from train.devices.startup import before_jax_starts

    before_jax_starts()  # train/devices/startup.py
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.accelerator", description=__doc__)
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--shapes", choices=("full", "tiny"), default="full")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (after two warm-up steps)")
    parser.add_argument("--per_device_batch", type=int, default=0, help="0: PER_DEVICE_BATCH per model")
    parser.add_argument("--vocab_size", type=int, default=0, help="0: the model's own (50257, 30522)")
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {tuple(MODELS)}"
    )
    parser.add_argument("--remats", default="none,dots", help="comma-separated model.remat values")
    args = parser.parse_args(argv)
    models, remats = args.models.split(","), args.remats.split(",")
    if set(models) - set(MODELS):
        parser.error(f"--models: {sorted(set(models) - set(MODELS))} not in {tuple(MODELS)}")
    import jax

    from train.devices.chips import chip_of

    device = jax.devices()[0]
    steps = [s for s in STEPS if s != "cudnn" or device.platform == "gpu"]
    rows = [measure_row(m, s, r, args) for m in models for s in steps for r in remats]
    chip = chip_of(device.device_kind)
    os.makedirs(args.out, exist_ok=True)
    command = "python -m experiments.bench.accelerator " + " ".join(sys.argv[1:] if argv is None else argv)
    print(write(rows, args.out, command, chip.name if chip else device.platform))


if __name__ == "__main__":
    main()
