"""OUT/aot.md and OUT/aot.png from the rows of experiments/bench/aot/table.py: the materialised
step and the fused one side by side, then every row."""

from __future__ import annotations

import os
from typing import Any

from experiments.common import commit_stamp, markdown_table

REMAT_ORDER = {"none": 0, "dots": 1, "full": 2}
STEP_ORDER = {"materialised": 0, "fused": 1}
PAIR_HEADER = (
    *("model", "target (devices / hosts)", "fsdp", "remat", "GiB a device at 8 rows", "temporaries"),
    *("largest rows a device", "MFU bound", "bound by (fused)", "fused kernel calls"),
)
HEADER = (
    *("model", "target (devices / hosts)", "fsdp", "remat", "step", "GiB a device at 8 rows (state + temp)"),
    *("largest rows a device", "GiB at largest", "roofline step (ms)", "bound by", "MFU bound"),
    *(
        "MFU bound, FLOPs alone",
        "tokens/s a device bound",
        "kernel calls",
        "our bytes / XLA's",
        "compile (s)",
    ),
)
TEXT = (
    "Each model in bf16 (parameters and optimizer state float32), its real train step compiled for the "
    "target by the target's own compiler on this CPU host (libtpu for TPU slices; the CUDA plugin for "
    "GPUs, described by experiments/bench/aot/targets.py). Two steps: materialised (attention written out "
    "by XLA, the float32 logits of every scored token in the loss: the step before the fused kernels; "
    "its TPU rows are the table's earlier ones) and fused (what `auto` compiles: the splash kernel on TPU, "
    "Pallas's flash kernel on GPU, the loss over the vocabulary in chunks). GiB a device: XLA's memory "
    "analysis of the compiled step (state and batch + temporaries; the outputs reuse the donated state). "
    "Largest rows a device: the largest per-device batch that fits (it fits, one more row does not): "
    "within the chip's HBM as the TPU compiler counts it; on a GPU within JAX's default 75% of its HBM "
    "(XLA_PYTHON_CLIENT_MEM_FRACTION). Roofline, at the largest batch: the FLOPs at the chip's bf16 peak "
    "or the bytes at its HBM bandwidth, whichever is longer; collectives are not counted, so it is a "
    "bound, not a forecast. FLOPs and bytes: on TPU XLA's cost analysis plus the fused kernels by their "
    "own formula (XLA counts a custom kernel as nothing; models/fused_attention.py `kernel_cost`); on GPU, "
    "whose compiler gives no cost analysis, the model's FLOPs and the program's own estimate of its bytes "
    "(every launched op's operands and results, the kernels by formula: experiments/bench/aot/hlo_cost.py; "
    "our bytes / XLA's: that estimate over the TPU count, where both exist). MFU bound: the model FLOPs "
    "(train/observe/flops.py) over that time at the peak; FLOPs alone: the model FLOPs over the counted "
    "ones. \\* fewer counted than the model has: with the state sharded, the TPU compiler moves matmuls into "
    "asynchronous collective fusions, which XLA's cost analysis leaves out; the roofline then takes the "
    "model's FLOPs, and its bytes miss those fusions' too, so the bound is optimistic. Compile: wall "
    "seconds for the 8-row step on this 2-core host, at times busy with other work (a rough guide). "
    "Rows: gpt2 and small at 1024 / 512 tokens, bert_base at 512."
)


def _number(value: Any, digits: int) -> str:
    return "" if value in ("", None) else f"{float(value):,.{digits}f}"


def _flops_alone(over_model: Any) -> str:
    """The model FLOPs over the counted ones; 1 and a star where fewer were counted."""
    if over_model in ("", None):
        return ""
    ratio = float(over_model)
    return _number(1 / ratio, 2) if ratio >= 1 else "1.00*"


def _at_8(r: dict[str, Any]) -> str:
    if r.get("gib_at_8") in ("", None):
        return "does not fit"
    return (
        f"{_number(r['gib_at_8'], 2)} ({_number(r['state_gib_at_8'], 2)} + {_number(r['temp_gib_at_8'], 2)})"
    )


def _where(r: dict[str, Any]) -> list[str]:
    return [r["model"], f"{r['topology']} ({r['chips']} / {r['hosts']})", str(r["fsdp"]), r["remat"]]


def _cells(r: dict[str, Any]) -> list[str]:
    return [
        *_where(r),
        r["step"],
        _at_8(r),
        str(r["largest_batch"]),
        _number(r.get("gib_at_largest"), 2),
        _number(r.get("roofline_ms"), 1),
        r.get("bound_by", ""),
        _number(r.get("mfu_bound"), 2),
        _flops_alone(r.get("xla_over_model_flops")),
        _number(r.get("tokens_per_s_per_chip_bound"), 0),
        str(r.get("kernel_calls", "")),
        _number(r.get("hlo_over_xla_bytes"), 2),
        _number(r["compile_s_at_8"], 0),
    ]


def _pair_cells(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    def arrow(key: str, digits: int) -> str:
        return f"{_number(before.get(key), digits) or '-'} → {_number(after.get(key), digits) or '-'}"

    return [
        *_where(after),
        arrow("gib_at_8", 2),
        arrow("temp_gib_at_8", 2),
        f"{before['largest_batch']} → {after['largest_batch']}",
        arrow("mfu_bound", 2),
        after.get("bound_by", ""),
        str(after.get("kernel_calls", "")),
    ]


def _order(models: tuple[str, ...]):
    rank = {m: i for i, m in enumerate(models)}
    return lambda r: (
        rank.get(r["model"], 99),
        r["topology"],
        int(r["fsdp"]) > 1,
        REMAT_ORDER[r["remat"]],
        STEP_ORDER[r["step"]],
    )


def pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(materialised, fused) rows of the same model, target, sharding and remat."""
    where = lambda r: (r["model"], r["topology"], int(r["fsdp"]) > 1, r["remat"])  # noqa: E731
    before = {where(r): r for r in rows if r["step"] == "materialised"}
    return [(before[where(r)], r) for r in rows if r["step"] == "fused" and where(r) in before]


def write(rows: list[dict[str, Any]], out: str, command: str, models: tuple[str, ...], planned: int) -> str:
    """Writes the table (models in the order of `models`; `planned` rows when complete) and its
    plot; returns the markdown's path."""
    import jax

    rows = sorted(rows, key=_order(models))
    lines = [
        "# Accelerators compiled ahead of time on a CPU host: the materialised step and the fused one",
        "",
        f"command: `{command}`  ",
        f"rows: {len(rows)} of {planned}"
        + ("" if len(rows) >= planned else " (each search takes minutes; the same command adds the rest)")
        + "  ",
        f"commit: {commit_stamp()}; JAX {jax.__version__}; libtpu {_version('libtpu')}; "
        f"CUDA plugin {_version('jax-cuda12-plugin')}",
        "",
        TEXT,
        "",
        "## Before and after",
        "",
        *markdown_table(PAIR_HEADER, [_pair_cells(b, a) for b, a in pairs(rows)]),
        "",
        "## Every row",
        "",
        *markdown_table(HEADER, [_cells(r) for r in rows]),
        "",
    ]
    path = os.path.join(out, "aot.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    _plot(rows, os.path.join(out, "aot.png"))
    return path


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    """Largest rows a device and the MFU bound, a panel per model, the state replicated: a pair
    of bars (materialised, fused) per target and remat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if int(r["fsdp"]) == 1]
    models = list(dict.fromkeys(r["model"] for r in rows)) or ["-"]
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 7), squeeze=False)
    settings = [(s, remat) for remat in ("none", "dots") for s in ("materialised", "fused")]
    for col, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        targets = list(dict.fromkeys(r["topology"] for r in mine))
        for i, (step, remat) in enumerate(settings):
            picked = {r["topology"]: r for r in mine if r["step"] == step and r["remat"] == remat}
            xs = [j + 0.2 * (i - 1.5) for j in range(len(targets))]
            for row, key in ((0, "largest_batch"), (1, "mfu_bound")):
                ys = [float(picked[t][key] or 0) if t in picked else 0.0 for t in targets]
                axes[row][col].bar(xs, ys, width=0.2, label=f"{step}, remat {remat}")
        for row, name in ((0, "largest rows a device"), (1, "MFU bound (roofline)")):
            axes[row][col].set_xticks(range(len(targets)), targets, rotation=30)
            axes[row][col].set_title(f"{model}: {name}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
