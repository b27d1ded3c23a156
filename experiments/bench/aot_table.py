"""The TPU table: GPT-2, BERT-base and `small` compiled ahead of time for TPU slices on a CPU host.

    python -m experiments.bench.aot_table --out experiments/results

Every model in bf16 on every slice of `TOPOLOGIES` (one of them of four hosts), with the state
replicated (`mesh.fsdp=1`) and sharded over every chip, remat off and `dots`: the memory a chip
needs at 8 rows, the largest per-device batch that compiles within its HBM (experiments/bench/aot.py's
search), and at that batch the roofline step time, what bounds it and the MFU it allows. Writes
OUT/tpu_aot.md, .csv and .png; a row already in the csv is not compiled again, so an interrupted
command resumes where it stopped. Takes hours on a 2-core host (every search is 3 to 7 compiles
of 10 to 50 s).
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
TOPOLOGIES = ("v5e:4x4", "v6e:2x2", "v5p:2x2x1", "v4:2x2x1")
REMATS = ("none", "dots")
START_BATCH = 8  # the per-device batch every search starts from; its memory is a column
COLUMNS = (
    *("model", "topology", "chip", "chips", "hosts", "fsdp", "remat", "seq_len"),
    *("gib_at_8", "state_gib_at_8", "temp_gib_at_8", "compile_s_at_8", "largest_batch", "gib_at_largest"),
    *("roofline_ms", "bound_by", "mfu_bound", "tokens_per_s_per_chip_bound", "xla_over_model_flops"),
    *("compiles", "search_s"),
)


def cell(model: str, topology: str, fsdp_all: bool, remat: str, hint: int | None = None) -> dict[str, Any]:
    """One row: the search for `model` on `topology` (experiments/bench/aot.py), flattened; it
    steps from `hint` when one is given (experiments/bench/batch_search.py)."""
    import configs
    from experiments.bench.tpu_compile import measure, topology_devices

    objective, variant, vocab = MODELS[model]
    chips = len(topology_devices(topology))
    fsdp = chips if fsdp_all else 1
    config = configs.get_config(
        objective, variant, {"model.dtype": "bfloat16", "model.remat": remat, "mesh.fsdp": fsdp}
    )
    result = measure(config, topology, vocab, START_BATCH, search=True, hint=hint)
    start, best = result["at_start"], result["at_largest"]
    row = {
        **{k: result[k] for k in ("topology", "chip", "chips", "hosts", "remat", "seq_len")},
        "model": model,
        "fsdp": fsdp,
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
        row.update(
            gib_at_largest=best["memory_per_chip"]["peak_bytes"] / GIB,
            roofline_ms=1e3 * best["roofline_seconds"],
            bound_by=best["bound_by"],
            mfu_bound=best["mfu_bound"],
            tokens_per_s_per_chip_bound=best["tokens_per_sec_per_chip_bound"],
            xla_over_model_flops=best["xla_flops_per_chip"] / best["model_flops_per_chip"],
        )
    return row


def key(row: dict[str, Any]) -> tuple[str, ...]:
    return (row["model"], row["topology"], str(int(row["fsdp"]) != 1), row["remat"])


def sibling_hint(
    rows: list[dict[str, Any]], model: str, topology: str, fsdp_all: bool, remat: str
) -> int | None:
    """The largest batch of the same model, slice and remat with the state sharded the other way,
    where the search for this row starts stepping: the two were within 3% of each other in 11 of
    the first 16 pairs (every pair with remat `dots`) and at most 68% apart (GPT-2 on v5e 4x4
    without remat: 19 and 32 rows)."""
    sibling = (model, topology, str(not fsdp_all), remat)
    found = [int(r["largest_batch"]) for r in rows if key(r) == sibling and int(r["largest_batch"] or 0) > 0]
    return found[0] if found else None


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
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.aot_table", description=__doc__)
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {tuple(MODELS)}"
    )
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    args = parser.parse_args(argv)
    from experiments.bench import aot_report
    from train.devices.platform import libtpu_installed, skip_absent_accelerators

    skip_absent_accelerators()
    if not libtpu_installed():
        parser.error(
            "libtpu is not installed: pip install -e '.[test]' (or '.[tpu]') brings the TPU compiler"
        )
    models, topologies = args.models.split(","), args.topologies.split(",")
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"--models: {sorted(unknown)} not in {tuple(MODELS)}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tpu_aot.csv")
    rows = read_rows(path)
    done = {key(r) for r in rows}
    # The replicated, remat-off row of every model on every slice first, so that a table still
    # filling already says which runs fit where.
    todo = [(m, t, a, r) for a in (False, True) for r in REMATS for m in models for t in topologies]
    todo = [c for c in todo if (c[0], c[1], str(c[2]), c[3]) not in done]
    progress = Progress("tpu_aot", len(todo), verb="search")
    planned = len(models) * len(topologies) * 2 * len(REMATS)
    command = "python -m experiments.bench.aot_table " + " ".join(sys.argv[1:] if argv is None else argv)
    for m, t, fsdp_all, remat in todo:
        label = f"{m} on {t}, fsdp {'all' if fsdp_all else 1}, remat {remat}"
        progress.start(label, "ahead-of-time compiles")
        rows.append(cell(m, t, fsdp_all, remat, sibling_hint(rows, m, t, fsdp_all, remat)))
        progress.finish(label, f"largest batch {rows[-1]['largest_batch']} per chip")
        # After every row, so that the table on disk always says what the csv holds.
        write_csv(rows, path)
        aot_report.write(read_rows(path), args.out, command, tuple(MODELS), planned)
    print(aot_report.write(read_rows(path), args.out, command, tuple(MODELS), planned))


if __name__ == "__main__":
    main()
