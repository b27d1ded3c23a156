"""Scaling laws for GPT and BERT against the exact optimum of the embedded HMM corpus.

    python -m experiments.scaling --preset cpu --seeds 2 --out experiments/results --jobs 2
    python -m experiments.scaling --preset gpu --seeds 2 --out /results --jobs 4 \
        --objectives clm,mlm,prefix_lm,hybrid

Trains the grid of experiments/scaling/grid.py (sizes x token budgets x objectives x seeds),
each point an independent `python -m train.main` run in `OUT/runs/scaling/...`, `--jobs` at
once; a finished run is never retrained, so an interrupted command resumes. Then fits
`L(N, D) = E + A / N^alpha + B / D^beta` per objective with E fixed at the exact optimum and with
E free, the compute-optimal frontier and the gap between the objectives
(experiments/scaling/fit.py), and writes OUT/scaling.md, OUT/scaling.csv, OUT/scaling.png and
OUT/scaling_frontier.png (experiments/scaling/report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from experiments import common, runs
from experiments.progress import Progress
from experiments.scaling import grid, report

OBJECTIVES: tuple[str, ...] = ("clm", "mlm", "prefix_lm", "hybrid")


def collect(workdir: str, point: grid.Point) -> dict[str, Any]:
    """One finished run as a row: its size, tokens, compute and final eval."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    m, vocab = config["model"], config["resolved"]["vocab_size"]
    lookups = vocab * m["d_model"] + (m["max_len"] * m["d_model"] if m["position"] == "learned" else 0)
    n = config["resolved"]["num_params"] - lookups
    tokens = point.steps * config["batch_size"] * config["seq_len"]
    ev = summary["eval"]
    return {
        "objective": point.objective,
        "size": point.size,
        "num_layers": m["num_layers"],
        "d_model": m["d_model"],
        "steps": point.steps,
        "seed": point.seed,
        "params": n,
        "tokens": tokens,
        "compute": 6.0 * n * tokens,
        "model_flops": summary.get("model_flops_per_step", float("nan")) * point.steps,
        "eval_loss": ev["loss"],
        "oracle_loss": ev["oracle_loss"],
        "unigram_loss": ev["unigram_loss"],
        "captured": ev["captured"],
        "wall_seconds": summary["wall_seconds"],
    }


def run_grid(
    preset: str, seeds: int, out: str, sets: dict[str, Any], objectives: tuple[str, ...], jobs: int
) -> list[dict[str, Any]]:
    if sets.get("dataset", "hmm") != "hmm":
        raise SystemExit("experiments.scaling measures against the exact HMM optimum: it needs dataset=hmm")
    todo = grid.points(preset, objectives, seeds)
    progress = Progress("scaling", len(todo), jobs)

    def one(point: grid.Point) -> dict[str, Any]:
        workdir = os.path.join(out, "runs", "scaling", point.slug)
        overrides = grid.overrides(preset, point, sets)
        runs.ensure_trained(workdir, point.objective, overrides, progress, point.slug, jobs=jobs)
        return collect(workdir, point)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, todo))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.scaling", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--preset", choices=sorted(grid.PRESETS), default="cpu")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--objectives", default="clm,mlm", help=f"comma-separated subset of {OBJECTIVES}")
    parser.add_argument("--jobs", type=int, default=1, help="training processes at once")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamplings for the intervals")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every run")
    args = parser.parse_args(argv)
    objectives = tuple(o for o in args.objectives.split(",") if o)
    if set(objectives) - set(OBJECTIVES):
        parser.error(f"--objectives: {sorted(set(objectives) - set(OBJECTIVES))} not in {OBJECTIVES}")
    command = "python -m experiments.scaling " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = run_grid(args.preset, args.seeds, args.out, common.parse_set(args.set), objectives, args.jobs)
    print(report.write(rows, args.preset, args.seeds, args.out, command, args.bootstrap))


if __name__ == "__main__":
    main()
