"""Training runs as independent processes: launch, detect finished ones, collect their results.

Shared by `experiments.ablate` and `experiments.compare`. A run is `python -m train.main` with a
config file per objective (`configs.FILES`; in process, `configs.get_config` builds the same
config) plus overrides, in its own workdir; rerunning an unfinished one resumes it from its
last checkpoint, and a finished one (summary.json at the final step) is never rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import configs
from experiments.progress import Progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finished(workdir: str, steps: int) -> bool:
    """Whether the run in `workdir` has trained all `steps` (its summary is of the final step)."""
    path = os.path.join(workdir, "summary.json")
    return os.path.exists(path) and json.load(open(path))["final_step"] == steps


def train(
    workdir: str, objective: str, overrides: dict[str, Any], variant: str = "tiny", jobs: int = 1
) -> None:
    """Runs (or resumes) one training process; its output goes to `workdir/log.txt`. Tables read
    metrics, not samples: eval samples are off unless `overrides` turns them on. With `jobs` > 1
    processes at once, each may take 1/jobs of an accelerator's memory (on a CPU they share its
    cores); the results do not depend on it."""
    overrides = {"eval_samples": 0, **overrides}
    cmd = configs.train_command(objective, workdir, overrides, variant)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "log.txt"), "a") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        env = dict(os.environ)
        if jobs > 1:  # JAX would otherwise preallocate 75% of the device for the first process
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / jobs:.3f}"
        result = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        tail = open(os.path.join(workdir, "log.txt")).read()[-2000:]
        raise RuntimeError(f"run failed ({workdir}):\n{tail}")


def ensure_trained(
    workdir: str,
    objective: str,
    overrides: dict[str, Any],
    progress: Progress,
    label: str,
    variant: str = "tiny",
    jobs: int = 1,
) -> None:
    """`train` unless the run in `workdir` has finished, reported to `progress` as `label`."""
    if finished(workdir, overrides["num_train_steps"]):
        progress.skip(label)
        return
    progress.start(label, f"log: {os.path.join(workdir, 'log.txt')}")
    train(workdir, objective, overrides, variant, jobs)
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    progress.finish(label, f"eval loss {summary['eval']['loss']:.4f}")


def metrics_lines(workdir: str) -> list[dict[str, Any]]:
    """Every line of the run's metrics.jsonl (train and eval), in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def collect(workdir: str) -> dict[str, Any]:
    """The final eval (`eval_*`), last train loss, wall time and parameter count of a run."""
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    resolved = json.load(open(os.path.join(workdir, "config.json")))["resolved"]
    last_train = [r for r in metrics_lines(workdir) if r["split"] == "train"][-1]
    out = {f"eval_{k}": v for k, v in summary["eval"].items()}
    out.update(
        train_loss=last_train["loss"], wall_seconds=summary["wall_seconds"], num_params=resolved["num_params"]
    )
    return out


def block_grad_norms(workdir: str, kinds: tuple[str, ...] = ()) -> dict[str, list[list[float]]]:
    """Per block (`blocks0`, ...): [step, gradient norm of its parameters of `kinds` (all when
    empty)] at each log step, from the run's `layer_stats.jsonl` (runs with `log_layer_stats=True`;
    empty for a run without one)."""
    out: dict[str, list[list[float]]] = {}
    if not os.path.exists(os.path.join(workdir, "layer_stats.jsonl")):
        return out
    with open(os.path.join(workdir, "layer_stats.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            squares: dict[str, float] = {}
            for group, stats in record.items():
                if group != "step" and "/" in group and (not kinds or group.split("/")[1] in kinds):
                    block = group.split("/")[0]
                    squares[block] = squares.get(block, 0.0) + stats["grad_norm"] ** 2
            for block, sq in squares.items():
                out.setdefault(block, []).append([record["step"], sq**0.5])
    return out
