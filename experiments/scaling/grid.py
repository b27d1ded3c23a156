"""The scaling grid: model sizes x token budgets x objectives x seeds, one `train.main` run each.

Sizes grow width and depth together by one rule: `num_layers = k`, `d_model = 16 (k + 1)`,
`mlp_dim = 4 d_model`, head dimension 16 (`num_heads = d_model / 16`). Budgets are steps at a
fixed batch and sequence length, so tokens `D = steps x batch_size x seq_len`; every run's
learning-rate schedule (warmup 10% of its steps, cosine decay) ends at its own budget, so a
budget is a separately trained run, never a point read off a longer one. Eval only at the end.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from experiments import common


@dataclasses.dataclass(frozen=True)
class Preset:
    sizes: tuple[int, ...]  # k of the size rule
    steps: tuple[int, ...]  # token budgets, as train steps
    base: dict[str, Any]  # overrides shared by every run


PRESETS: dict[str, Preset] = {
    # 5 sizes (non-embedding parameters 13k .. 559k, 44x) x 4 budgets (0.2M .. 2M tokens, 10x):
    # short rows and small batches, so that 80 runs (2 objectives, 2 seeds) fit a 2-core CPU.
    "cpu": Preset(
        sizes=(1, 2, 3, 4, 5),
        steps=(200, 400, 900, 2000),
        base={**common.PRESETS["cpu"], "seq_len": 64, "batch_size": 16, "optim.learning_rate": 2e-3},
    ),
    # 6 sizes (k 2 .. 12: 57k .. 6.3M non-embedding, 110x) x 5 budgets (2M .. 65M tokens, 32x).
    "gpu": Preset(
        sizes=(2, 3, 4, 6, 8, 12),
        steps=(250, 500, 1000, 2000, 8000),
        base={**common.PRESETS["gpu"], "batch_size": 64},
    ),
}


@dataclasses.dataclass(frozen=True)
class Point:
    objective: str
    size: int
    steps: int
    seed: int

    @property
    def slug(self) -> str:
        return f"{self.objective}/k{self.size}_steps{self.steps}/seed{self.seed}"


def shape(k: int) -> dict[str, int]:
    d = 16 * (k + 1)
    return {"model.num_layers": k, "model.d_model": d, "model.mlp_dim": 4 * d, "model.num_heads": d // 16}


def overrides(preset: str, point: Point, sets: dict[str, Any]) -> dict[str, Any]:
    p = PRESETS[preset]
    return {
        **p.base,
        **shape(point.size),
        "num_train_steps": point.steps,
        "optim.warmup_steps": max(1, point.steps // 10),
        "log_every_steps": math.gcd(point.steps, 50),  # divides the budget: a log at the end
        "eval_every_steps": point.steps,
        "checkpoint_every_steps": point.steps,
        **sets,
        "seed": point.seed,
    }


def points(preset: str, objectives: tuple[str, ...], seeds: int) -> list[Point]:
    p = PRESETS[preset]
    return [
        Point(o, k, s, seed) for o in objectives for k in p.sizes for s in p.steps for seed in range(seeds)
    ]
