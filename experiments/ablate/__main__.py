"""One command per ablation table: runs every (row, seed), then writes TABLE.md, .csv and .png.

    python -m experiments.ablate position --preset cpu --seeds 3 --out experiments/results
    python -m experiments.ablate heads --preset gpu --seeds 3 --out /results --jobs 1

Each run is an independent `python -m train.main` process in `OUT/runs/TABLE/ROW/seedN`. A table
resumes where it stopped: finished runs are not rerun and an interrupted one continues from its
checkpoint. `--set key=value` overrides a config field in every run (for quick trials);
`--rows N` keeps the first N rows. Tables are in experiments/ablate/tables.py, presets in
experiments/common.py, the in-process measurements some tables add in experiments/ablate/measure.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import configs
from experiments import runs
from experiments.ablate import report
from experiments.ablate.tables import Row, Table, make_tables, run_overrides
from experiments.common import cached_json, parse_set
from experiments.progress import Progress
from train.devices.startup import before_jax_starts

TIMING_LENGTHS = {"cpu": (64, 128, 256, 512, 1024), "gpu": (128, 256, 512, 1024, 2048, 4096)}


def _measure(kind: str, workdir: str, objective: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """An in-process measurement (`measure.KIND`), cached as JSON in the run's folder."""
    # Imported here: it brings in JAX, which only tables with measurements need.
    from experiments.ablate import measure

    def compute() -> dict[str, Any]:
        return getattr(measure, kind)(configs.get_config(objective, "tiny", overrides), workdir)

    return cached_json(os.path.join(workdir, f"{kind}.json"), compute)


def run_table(
    table: Table,
    preset: str,
    seeds: int,
    out: str,
    sets: dict[str, Any],
    jobs: int,
    rows: list[Row],
    command: str,
) -> str:
    """Trains (or resumes) every (row, seed) of `table`, adds its measurements, writes the report;
    returns the path of TABLE.md."""
    root = os.path.join(out, "runs", table.name)
    todo = [(row, seed) for row in rows for seed in range(seeds)]
    progress = Progress(table.name, len(todo), jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda item: _one_run(table, preset, sets, progress, root, *item), todo))
    timing = _step_timing(table, preset, sets, root, rows) if "step_timing" in table.extra else []
    attention = (
        _attention_kinds(table, preset, sets, root, rows) if "attention_kinds" in table.extra else None
    )
    return report.write(table, preset, seeds, out, results, timing, command, attention)


def _one_run(
    table: Table, preset: str, sets: dict[str, Any], progress: Progress, root: str, row: Row, seed: int
) -> dict[str, Any]:
    """One (row, seed): trained unless finished, collected, with the table's measurements."""
    overrides = {**run_overrides(table, row, preset, seed), **sets}
    workdir = os.path.join(root, row.slug, f"seed{seed}")
    if "init_attention" in table.extra:  # measured at initialisation: before training
        init = _measure("init_attention_stats", workdir, row.objective, overrides)
    label = f"{row.slug} seed {seed}"
    runs.ensure_trained(workdir, row.objective, overrides, progress, label, jobs=progress.jobs)
    result = {"row": row, "seed": seed, **runs.collect(workdir)}
    if "eval_at_15" in table.extra:
        result.update(_measure("eval_at_15", workdir, row.objective, overrides))
    if "init_attention" in table.extra:
        result.update(init)
    if "by_length" in table.extra:
        result.update(_measure("seq2seq_by_length", workdir, row.objective, overrides))
    if "grad_norms" in table.extra:
        result["grad_trajectory"] = runs.block_grad_norms(workdir, table.grad_kinds)
    return result


def _step_timing(
    table: Table, preset: str, sets: dict[str, Any], root: str, rows: list[Row]
) -> list[dict[str, Any]]:
    """The compiled step's time of each row over the preset's sequence lengths."""
    timing = []
    for row in rows:
        for length in TIMING_LENGTHS[preset]:
            overrides = {
                **run_overrides(table, row, preset, 0),
                **sets,
                "seq_len": length,
                "model.max_len": length,
                "batch_size": 8,
            }
            workdir = os.path.join(root, "timing", f"{row.slug}_len{length}")
            measured = _measure("step_timing", workdir, row.objective, overrides)
            timing.append({"row": row, "seq_len": length, **measured})
            print(f"[{table.name}] timing {row.slug} L={length}: {timing[-1]['step_seconds']:.4f}s")
    return timing


def _attention_kinds(
    table: Table, preset: str, sets: dict[str, Any], root: str, rows: list[Row]
) -> dict[str, Any]:
    """The first encoder-decoder row, seed 0: one trained Transformer, one eval example."""
    row = next(r for r in rows if r.overrides.get("model.arch") == "encdec")
    overrides = {**run_overrides(table, row, preset, 0), **sets}
    attention = _measure("attention_kinds", os.path.join(root, row.slug, "seed0"), row.objective, overrides)
    attention["caption"] = f"{row.slug} seed 0, eval source of length {attention['length']}, mean over heads"
    return attention


def main(argv: list[str] | None = None) -> None:
    before_jax_starts()  # train/devices/startup.py
    tables = make_tables()
    parser = argparse.ArgumentParser(prog="python -m experiments.ablate", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(tables))
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, e.g. --set num_train_steps=100",
    )
    args = parser.parse_args(argv)
    table = tables[args.table]
    command = "python -m experiments.ablate " + " ".join(sys.argv[1:] if argv is None else argv)
    path = run_table(
        table,
        args.preset,
        args.seeds,
        args.out,
        parse_set(args.set),
        args.jobs,
        table.rows[: args.rows],
        command,
    )
    print(path)


if __name__ == "__main__":
    main()
