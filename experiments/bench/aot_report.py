"""OUT/tpu_aot.md and OUT/tpu_aot.png from the rows of experiments/bench/aot_table.py."""

from __future__ import annotations

import os
from typing import Any

from experiments.common import commit_stamp, markdown_table

REMAT_ORDER = {"none": 0, "dots": 1, "full": 2}
HEADER = (
    *("model", "slice (chips / hosts)", "fsdp", "remat", "GiB per chip at 8 rows (state + temp)"),
    *("largest rows per chip", "GiB at largest", "roofline step (ms)", "bound by", "MFU bound"),
    "MFU bound, FLOPs alone",
    *("tokens/s per chip bound", "compile (s)"),
)


def _number(value: Any, digits: int) -> str:
    return "" if value in ("", None) else f"{float(value):,.{digits}f}"


def _flops_alone(xla_over_model: Any) -> str:
    """The model FLOPs over XLA's; 1 and a star where XLA counted fewer (see the table's text)."""
    if xla_over_model in ("", None):
        return ""
    ratio = float(xla_over_model)
    return _number(1 / ratio, 2) if ratio >= 1 else "1.00*"


def _cells(r: dict[str, Any]) -> list[str]:
    at_8 = (
        f"{_number(r['gib_at_8'], 2)} ({_number(r['state_gib_at_8'], 2)} + {_number(r['temp_gib_at_8'], 2)})"
        if r.get("gib_at_8") not in ("", None)
        else "does not fit"
    )
    return [
        r["model"],
        f"{r['topology']} ({r['chips']} / {r['hosts']})",
        str(r["fsdp"]),
        r["remat"],
        at_8,
        str(r["largest_batch"]),
        _number(r.get("gib_at_largest"), 2),
        _number(r.get("roofline_ms"), 1),
        r.get("bound_by", ""),
        _number(r.get("mfu_bound"), 2),
        _flops_alone(r.get("xla_over_model_flops")),
        _number(r.get("tokens_per_s_per_chip_bound"), 0),
        _number(r["compile_s_at_8"], 0),
    ]


def write(rows: list[dict[str, Any]], out: str, command: str, models: tuple[str, ...], planned: int) -> str:
    """Writes the table (models in the order of `models`; `planned` rows when complete) and its
    plot; returns the markdown's path."""
    import jax

    order = {m: i for i, m in enumerate(models)}
    rows = sorted(
        rows,
        key=lambda r: (order.get(r["model"], 99), r["topology"], int(r["fsdp"]) > 1, REMAT_ORDER[r["remat"]]),
    )
    lines = [
        "# TPU slices, compiled ahead of time on a CPU host",
        "",
        f"command: `{command}`  ",
        f"rows: {len(rows)} of {planned}"
        + ("" if len(rows) >= planned else " (each search takes minutes; the same command adds the rest)")
        + "  ",
        f"commit: {commit_stamp()}; JAX {jax.__version__}; the TPU compiler of libtpu {_libtpu_version()}",
        "",
        "Each model in bf16 (parameters and optimizer state float32), its real train step compiled "
        "for the slice by the TPU compiler. GiB per chip: XLA's memory analysis of the compiled step "
        "(state and batch + temporaries; the step's outputs reuse the donated state). Largest rows "
        "per chip: the largest per-device batch the compiler accepts within the chip's HBM, found by "
        "search (it fits, one more row does not); GiB at largest sums XLA's argument, output and "
        "temporary sizes less the outputs written into donated inputs, which can come out above "
        "what the compiler itself counted against the HBM when it accepted the step. Roofline: "
        "XLA's FLOPs per chip at the chip's bf16 "
        "peak or its bytes accessed at the HBM bandwidth, whichever is longer, at the largest batch; "
        "collectives are not counted, so it is a bound, not a forecast. MFU bound: the model FLOPs "
        "(train/observe/flops.py) over that time at the peak; FLOPs alone: the model FLOPs over XLA's "
        "(what recomputation and the ops besides matmuls leave of the peak if memory were free). "
        "\\* XLA counted fewer FLOPs than the model has: with the state sharded, the TPU compiler "
        "moves matmuls into asynchronous collective fusions, which XLA's cost analysis leaves out "
        "(about half of the matmuls of `small` with fsdp 16 and remat `dots`); the roofline then "
        "takes the model's FLOPs, and its bytes miss those fusions' too, so the bound is optimistic. "
        "Compile: wall seconds for the 8-row step on this 2-core host, at times busy with other "
        "work (a rough guide). Rows: gpt2 and small at 1024 / 512 tokens, bert_base at 512.",
        "",
        *markdown_table(HEADER, [_cells(r) for r in rows]),
        "",
    ]
    path = os.path.join(out, "tpu_aot.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    _plot(rows, os.path.join(out, "tpu_aot.png"))
    return path


def _libtpu_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    """Largest rows per chip and the MFU bound, a panel per model, a bar per slice and setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    settings = [(False, "none"), (False, "dots"), (True, "none"), (True, "dots")]
    for col, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        slices = list(dict.fromkeys(r["topology"] for r in mine))
        for i, (sharded, remat) in enumerate(settings):
            picked = {
                r["topology"]: r for r in mine if (int(r["fsdp"]) > 1) == sharded and r["remat"] == remat
            }
            xs = [j + 0.2 * (i - 1.5) for j in range(len(slices))]
            label = f"fsdp {'all' if sharded else 1}, remat {remat}"
            for row, key in ((0, "largest_batch"), (1, "mfu_bound")):
                ys = [float(picked[t][key] or 0) if t in picked else 0.0 for t in slices]
                axes[row][col].bar(xs, ys, width=0.2, label=label)
        for row, name in ((0, "largest rows per chip"), (1, "MFU bound (roofline)")):
            axes[row][col].set_xticks(range(len(slices)), slices)
            axes[row][col].set_title(f"{model}: {name}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
