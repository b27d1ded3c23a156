"""The accelerator table: GPT-2, BERT-base and `small` compiled ahead of time for TPU slices and
GPUs on a CPU host, with the materialised step and the fused one side by side.

    python -m experiments.bench.aot.table --out experiments/results

Every model in bf16 on every target of `TARGETS` (TPU slices, one of them of four hosts, and one
H100, H200 and A100), the state replicated (`mesh.fsdp=1`) and, on slices, sharded over every
chip, remat off and `dots`, and two steps: "materialised" (attention written out by XLA, the full
logits in the loss: `attention_impl=xla loss_impl=full`, the step before the fused kernels) and
"fused" (what `auto` compiles there: the splash or Pallas GPU attention kernel, the chunked
loss). Per row: the memory a device needs at 8 rows, the largest per-device batch that fits
(experiments/bench/aot/'s search), and at that batch the roofline step time, what bounds it and
the MFU it allows. Writes OUT/aot.md, .csv and .png; a row already in the csv is not compiled
again, so an interrupted command resumes where it stopped, in the order of `todo` (the rows a
reader needs first). Takes hours on a 2-core host (a search is 3 to 13 compiles of 10 s to 10 min).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Any

from experiments.progress import Progress
from train.devices.chips import GIB

# name -> (objective, variant, vocabulary): GPT-2 and BERT with their tokenizers' vocabularies,
# `small` with the default text tokenizer's.
MODELS: dict[str, tuple[str, str, int]] = {
    "gpt2": ("clm", "gpt2", 50257),
    "bert_base": ("mlm", "bert_base", 30522),
    "small": ("clm", "small", 8192),
}
TPUS = ("v5e:4x4", "v6e:2x2", "v5p:2x2x1", "v4:2x2x1")
GPUS = ("h100", "h200", "a100")
TARGETS = TPUS + GPUS
REMATS = ("none", "dots")
STEPS: dict[str, dict[str, str]] = {
    "materialised": {"model.attention_impl": "xla", "model.loss_impl": "full"},
    "fused": {},  # "auto": the target's kernel, the chunked loss
}
START_BATCH = 8  # the per-device batch every search starts from; its memory is a column
COLUMNS = (
    *("model", "topology", "chip", "chips", "hosts", "fsdp", "remat", "step", "seq_len"),
    *("gib_at_8", "state_gib_at_8", "temp_gib_at_8", "compile_s_at_8", "largest_batch", "gib_at_largest"),
    *("roofline_ms", "bound_by", "mfu_bound", "tokens_per_s_per_chip_bound", "xla_over_model_flops"),
    *("kernel_calls", "hlo_over_xla_bytes", "compiles", "search_s"),
)


def cell(
    model: str, topology: str, fsdp_all: bool, remat: str, step: str, hint: int | None = None
) -> dict[str, Any]:
    """One row: the search for `model` on `topology` (experiments/bench/aot/measure.py),
    flattened; it steps from `hint` when one is given (experiments/bench/aot/batch_search.py)."""
    import configs
    from experiments.bench.aot.measure import measure
    from experiments.bench.aot.targets import compile_target

    objective, variant, vocab = MODELS[model]
    chips = len(compile_target(topology).devices)
    overrides = {"model.dtype": "bfloat16", "model.remat": remat, "mesh.fsdp": chips if fsdp_all else 1}
    config = configs.get_config(objective, variant, {**overrides, **STEPS[step]})
    result = measure(config, topology, vocab, START_BATCH, search=True, hint=hint)
    start, best = result["at_start"], result["at_largest"]
    row = {
        **{k: result[k] for k in ("topology", "chip", "chips", "hosts", "remat", "seq_len")},
        "model": model,
        "fsdp": overrides["mesh.fsdp"],
        "step": step,
        "largest_batch": result["largest_per_device_batch"],
        "compiles": len(result["search"]),
        "search_s": round(sum(s["compile_seconds"] for s in result["search"]), 1),
        "compile_s_at_8": start["compile_seconds"],
    }
    if start["fits"]:
        memory = start["memory_per_chip"]
        row.update(
            gib_at_8=memory["peak_bytes"] / GIB,
            state_gib_at_8=memory["argument_bytes"] / GIB,
            temp_gib_at_8=memory["temp_bytes"] / GIB,
        )
    if best:
        row.update(_at_largest(best))
    return row


def _at_largest(best: dict[str, Any]) -> dict[str, Any]:
    return {
        "gib_at_largest": best["memory_per_chip"]["peak_bytes"] / GIB,
        "roofline_ms": 1e3 * best["roofline_seconds"],
        "bound_by": best["bound_by"],
        "mfu_bound": best["mfu_bound"],
        "tokens_per_s_per_chip_bound": best["tokens_per_sec_per_chip_bound"],
        # XLA's FLOPs with the fused kernels' by their formula, over the model's (GPU: none).
        "xla_over_model_flops": best["flops_per_chip"] / best["model_flops_per_chip"]
        if best["xla_flops_per_chip"]
        else "",
        "kernel_calls": best["kernel_calls"],
        "hlo_over_xla_bytes": best["hlo_bytes_per_chip"] / best["bytes_per_chip"]
        if best["xla_bytes_per_chip"]
        else "",
    }


def key(row: dict[str, Any]) -> tuple[str, ...]:
    return (row["model"], row["topology"], str(int(row["fsdp"]) != 1), row["remat"], row["step"])


def sibling_hint(
    rows: list[dict[str, Any]], model: str, topology: str, fsdp_all: bool, remat: str, step: str
) -> int | None:
    """The largest batch of the same model, target, remat and step with the state sharded the
    other way, where the search for this row starts stepping: the two were within 3% of each
    other in 11 of the first 16 pairs (every pair with remat `dots`) and at most 68% apart
    (GPT-2 on v5e 4x4 without remat: 19 and 32 rows)."""
    sibling = (model, topology, str(not fsdp_all), remat, step)
    found = [int(r["largest_batch"]) for r in rows if key(r) == sibling and int(r["largest_batch"] or 0) > 0]
    return found[0] if found else None


def todo(models: list[str], targets: list[str], steps: list[str]) -> list[tuple[str, str, bool, str, str]]:
    """Every row of the plan, in the order they are searched: the fused step with the state
    replicated first (TPU slices, then GPUs), then the materialised step on GPUs (the TPU
    slices' came from the table before the fused kernels), then the rest; remat off before
    `dots` within each. A GPU target is one device: it has no sharded row."""
    rows = [
        (m, t, sharded, r, s)
        for s in steps
        for sharded in (False, True)
        for r in REMATS
        for m in models
        for t in targets
        if not (sharded and t in GPUS)
    ]

    def rank(row: tuple[str, str, bool, str, str]) -> tuple[int, ...]:
        _, t, sharded, r, s = row
        return (sharded, s != "fused", t not in GPUS if s == "materialised" else t in GPUS, r != "none")

    return sorted(rows, key=rank)


def read_rows(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    """Atomically, so an interrupted command never leaves half a row for the next to read."""
    with open(f"{path}.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
    os.replace(f"{path}.tmp", path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench.aot.table", description=__doc__, allow_abbrev=False
    )
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {tuple(MODELS)}"
    )
    parser.add_argument(
        "--topologies", default=",".join(TARGETS), help=f"comma-separated subset of {TARGETS}"
    )
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {tuple(STEPS)}")
    args = parser.parse_args(argv)
    from experiments.bench.aot import report
    from train.devices.platform import skip_absent_accelerators

    skip_absent_accelerators()
    models, targets, steps = args.models.split(","), args.topologies.split(","), args.steps.split(",")
    for flag, given, known in (
        ("models", models, MODELS),
        ("topologies", targets, TARGETS),
        ("steps", steps, STEPS),
    ):
        if set(given) - set(known):
            parser.error(f"--{flag}: {sorted(set(given) - set(known))} not in {tuple(known)}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "aot.csv")
    rows = read_rows(path)
    done = {key(r) for r in rows}
    plan = todo(list(MODELS), list(TARGETS), list(STEPS))
    left = [c for c in todo(models, targets, steps) if (c[0], c[1], str(c[2]), c[3], c[4]) not in done]
    progress = Progress("aot", len(left), verb="search")
    command = "python -m experiments.bench.aot.table " + " ".join(sys.argv[1:] if argv is None else argv)
    for m, t, fsdp_all, remat, step in left:
        label = f"{m} on {t}, fsdp {'all' if fsdp_all else 1}, remat {remat}, {step}"
        progress.start(label, "ahead-of-time compiles")
        rows.append(cell(m, t, fsdp_all, remat, step, sibling_hint(rows, m, t, fsdp_all, remat, step)))
        progress.finish(label, f"largest batch {rows[-1]['largest_batch']} per device")
        # After every row, so that the table on disk always says what the csv holds.
        write_csv(rows, path)
        report.write(read_rows(path), args.out, command, tuple(MODELS), len(plan))
    print(report.write(read_rows(path), args.out, command, tuple(MODELS), len(plan)))


if __name__ == "__main__":
    main()
