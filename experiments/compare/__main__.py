"""The objectives compared: GPT, BERT, prefix LM and the hybrid, same block, data and compute.

    python -m experiments.compare --preset cpu --seeds 3 --out experiments/results
    python -m experiments.compare --preset gpu --seeds 3 --out /results --jobs 4

Every (objective, seed) trains as an independent `python -m train.main` run in
`OUT/runs/compare/OBJECTIVE/seedN` (`--jobs N` of them at once) with the same model, batch,
sequence length and steps, so parameters and tokens seen are equal; compute differs only by
the vocabulary projection, which the masked LM pays on its ~15% scored positions alone (FLOPs
are reported). Each finished run is then evaluated in this process, from its checkpoint
(`train.inference.load.load_run`), and the result cached in the run's folder as
`compare_eval.json`, so an interrupted comparison resumes: own eval loss and the next-token
and masked-token views, a linear probe for the hidden HMM state per layer, minimal pairs, and
fine-tuning to tell two HMMs apart, each against its exact ceiling
(experiments/compare/evaluate.py). Writes OUT/compare.md, OUT/compare.csv and OUT/compare.png
(experiments/compare/report.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from experiments import common, runs
from experiments.compare import report
from experiments.compare.evaluate import EVAL_FILE, evaluate_run
from experiments.progress import Progress
from train.devices.startup import before_jax_starts

OBJECTIVES: tuple[str, ...] = ("clm", "mlm", "prefix_lm", "hybrid")

# The common presets, with longer training at `cpu` (probes and fine-tuning need a trained
# model) and a denser loss curve at `gpu`.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        **common.PRESETS["cpu"],
        "num_train_steps": 600,
        "optim.warmup_steps": 60,
        "checkpoint_every_steps": 300,
    },
    "gpu": {**common.PRESETS["gpu"], "eval_every_steps": 250},
}


def run_comparison(
    preset: str,
    seeds: int,
    out: str,
    sets: dict[str, Any],
    command: str,
    objectives: tuple[str, ...] = OBJECTIVES,
    jobs: int = 1,
) -> str:
    """Trains (or resumes) every (objective, seed), `jobs` runs at once, then evaluates each in
    this process; returns the path of compare.md."""
    overrides_base = {**PRESETS[preset], **sets}
    if overrides_base.get("dataset", "hmm") != "hmm":
        raise SystemExit(
            "experiments.compare evaluates probes, minimal pairs and fine-tuning against the exact "
            "HMM ceilings, so it needs dataset=hmm; train on text with train.main and load the "
            "runs with train.inference.load.load_trained"
        )
    todo = [(objective, seed) for objective in objectives for seed in range(seeds)]

    def workdir_of(objective: str, seed: int) -> str:
        return os.path.join(out, "runs", "compare", objective, f"seed{seed}")

    training = Progress("compare", len(todo), jobs)

    def train(item: tuple[str, int]) -> None:
        objective, seed = item
        overrides = {**overrides_base, "seed": seed}
        label = f"{objective} seed {seed}"
        runs.ensure_trained(workdir_of(objective, seed), objective, overrides, training, label, jobs=jobs)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(train, todo))
    evaluating = Progress("compare", len(todo), verb="evaluation")
    results, cache = [], {}
    for objective, seed in todo:
        results.append(_evaluate_one(workdir_of(objective, seed), objective, preset, seed, cache, evaluating))
    return report.write(results, preset, seeds, out, command, overrides_base)


def _evaluate_one(
    workdir: str, objective: str, preset: str, seed: int, cache: dict, progress: Progress
) -> dict[str, Any]:
    """`evaluate_run`, reported to `progress` (a cached evaluation counts as done at once)."""
    label = f"{objective} seed {seed}"
    if os.path.exists(os.path.join(workdir, EVAL_FILE)):
        result = evaluate_run(workdir, objective, preset, seed, cache)
        progress.skip(label, "evaluated before")
        return result
    progress.start(label, "probes, minimal pairs, fine-tuning")
    result = evaluate_run(workdir, objective, preset, seed, cache)
    progress.finish(
        label,
        f"eval loss {result['eval_loss']:.4f}, probe {result['probe_best']:.3f}, pairs "
        f"{result['pairs_accuracy']:.3f}, fine-tune {result['finetune_accuracy']:.3f}",
    )
    return result


def main(argv: list[str] | None = None) -> None:
    before_jax_starts()  # train/devices/startup.py
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument(
        "--objectives", default=",".join(OBJECTIVES), help=f"comma-separated subset of {OBJECTIVES}"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every run")
    parser.add_argument("--jobs", type=int, default=1, help="training processes at once")
    args = parser.parse_args(argv)
    objectives = tuple(o for o in args.objectives.split(",") if o)
    unknown = set(objectives) - set(OBJECTIVES)
    if unknown:
        parser.error(f"--objectives: {sorted(unknown)} not in {OBJECTIVES}")
    command = "python -m experiments.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    sets = common.parse_set(args.set)
    print(run_comparison(args.preset, args.seeds, args.out, sets, command, objectives, args.jobs))


if __name__ == "__main__":
    main()
