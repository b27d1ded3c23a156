"""The scaling report: fits per objective, fixed-E against free-E, the frontier and the gap, as
OUT/scaling.md, OUT/scaling.csv (every run), OUT/scaling.png and OUT/scaling_frontier.png.

Compute is `C = 6 N D` with N the non-embedding parameters (the convention the fitted frontier
is stated in; `model_flops` in the csv is the project's FLOP count). The common yardstick of the
objectives is the captured fraction of the learnable loss, `(U - L) / (U - E)`, with U the
unigram loss and E the exact optimum of the objective on the fixed eval set: 1 at the optimum,
0 at the unigram model, for either objective.
"""

from __future__ import annotations

import csv
import datetime
import os
from typing import Any

import numpy as np

from experiments.common import OBJECTIVE_NAMES, commit_stamp, markdown_table
from experiments.scaling import grid
from experiments.scaling.fit import Law, bootstrap, fit_law, interval

LEVELS = 5  # compute levels of the frontier and gap tables


def _ci(values, fmt: str) -> str:
    lo, hi = interval(values)
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def _estimate(law: Law, resampled: list[Law], field: str, fmt: str) -> str:
    """A fitted quantity and its bootstrap interval: "0.878 [0.688, 1.199]"."""
    return f"{getattr(law, field):{fmt}} {_ci([getattr(b, field) for b in resampled], fmt)}"


def analyse(rows: list[dict[str, Any]], samples: int) -> dict[str, dict[str, Any]]:
    """Per objective: the data, both fits and their bootstrap resamplings, E and U."""
    out = {}
    for objective in dict.fromkeys(r["objective"] for r in rows):
        mine = [r for r in rows if r["objective"] == objective]
        N, D, L = (np.array([r[k] for r in mine], float) for k in ("params", "tokens", "eval_loss"))
        E, U = (
            float(np.mean([r["oracle_loss"] for r in mine])),
            float(np.mean([r["unigram_loss"] for r in mine])),
        )
        fixed, free = fit_law(N, D, L, E), fit_law(N, D, L)
        out[objective] = {
            "N": N,
            "D": D,
            "L": L,
            "C": 6 * N * D,
            "E": E,
            "U": U,
            "fixed": fixed,
            "free": free,
            "fixed_bs": bootstrap(N, D, L, E, samples, full=fixed),
            "free_bs": bootstrap(N, D, L, None, samples, seed=1, full=free),
        }
    return out


def _captured(law: Law, C: np.ndarray, E: float, U: float) -> np.ndarray:
    n, d = law.optimal(C)
    return (U - law.loss(n, d)) / (U - E)


def observed_frontier(
    rows: list[dict[str, Any]], objective: str, bins: int = LEVELS
) -> list[dict[str, float]]:
    """Per log-spaced compute bin, the grid point (mean over seeds) with the lowest loss."""
    points: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        if r["objective"] == objective:
            points.setdefault((r["params"], r["tokens"]), []).append(r)
    means = [
        {"N": n, "D": d, "C": 6.0 * n * d, "loss": float(np.mean([r["eval_loss"] for r in rs]))}
        for (n, d), rs in points.items()
    ]
    edges = np.geomspace(min(m["C"] for m in means), max(m["C"] for m in means) * (1 + 1e-9), bins + 1)
    best = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = [m for m in means if lo <= m["C"] < hi]
        if inside:
            best.append(min(inside, key=lambda m: m["loss"]))
    return best


def _observed_frontier(rows: list[dict[str, Any]], name: dict[str, str]) -> list[str]:
    """The grid's own best (N, D) per compute bin, and the slopes of log N* and log D* in log C."""
    lines = [
        "",
        "## The observed frontier: the best grid point per compute bin (a check on the fitted one)",
        "",
    ]
    header = ["objective", "C bin best: (N, D, loss)", "N* ~ C^a (least squares)", "D* ~ C^b"]
    body = []
    for o in dict.fromkeys(r["objective"] for r in rows):
        best = observed_frontier(rows, o)
        logC = np.log([b["C"] for b in best])

        def slope(ys: list[float], logC: np.ndarray = logC) -> float:
            return float(np.polyfit(logC, np.log(ys), 1)[0]) if len(ys) > 1 else float("nan")

        cells = "; ".join(f"{b['N']:,}, {b['D'] / 1e6:.2f}M, {b['loss']:.4f}" for b in best)
        body.append(
            [name[o], cells, f"{slope([b['N'] for b in best]):.2f}", f"{slope([b['D'] for b in best]):.2f}"]
        )
    return lines + markdown_table(header, body)


def compute_levels(fits: dict[str, dict[str, Any]]) -> np.ndarray:
    """Compute levels inside every objective's grid."""
    lo = max(float(f["C"].min()) for f in fits.values())
    hi = min(float(f["C"].max()) for f in fits.values())
    return np.geomspace(lo, hi, LEVELS)


def write(rows: list[dict[str, Any]], preset: str, seeds: int, out: str, command: str, samples: int) -> str:
    """Fits the grid's runs and writes OUT/scaling.md, .csv, .png and scaling_frontier.png;
    returns the path of scaling.md."""
    os.makedirs(out, exist_ok=True)
    fits = analyse(rows, samples)
    levels = compute_levels(fits)
    name = {o: OBJECTIVE_NAMES[o] for o in fits}
    lines = _header(rows, preset, seeds, command, samples)
    lines += _fixed_e_table(fits, name)
    lines += _free_e_table(fits, name)
    lines += _frontier_table(fits, name, levels)
    lines += _observed_frontier(rows, name)
    lines += _grid_tables(rows, fits, name)
    lines += [
        "",
        "Plots: scaling.png (loss minus E against N and against D, with the fixed-E fits), "
        "scaling_frontier.png (iso-FLOP curves, the frontier, the captured fraction along it).",
    ]
    md_path = os.path.join(out, "scaling.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from experiments.scaling import plots

    plots.curves(os.path.join(out, "scaling.png"), fits, name)
    plots.frontier(os.path.join(out, "scaling_frontier.png"), fits, name, levels)
    return md_path


def _sizes(rows: list[dict[str, Any]]) -> list[tuple[int, int, int, int]]:
    """(k, layers, d_model, non-embedding parameters) of each size in the grid."""
    return sorted({(r["size"], r["num_layers"], r["d_model"], r["params"]) for r in rows})


def _budgets(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(steps, tokens) of each budget in the grid."""
    return sorted({(r["steps"], r["tokens"]) for r in rows})


def _header(rows: list[dict[str, Any]], preset: str, seeds: int, command: str, samples: int) -> list[str]:
    p = grid.PRESETS[preset]
    wall_hours = sum(r["wall_seconds"] for r in rows) / 3600
    stamp = f"{commit_stamp()}; seeds: {', '.join(map(str, range(seeds)))}; date: {datetime.date.today()}"
    shapes = ", ".join(f"k={k}: {n_l}x{d} ({n:,})" for k, n_l, d, n in _sizes(rows))
    return [
        "# Scaling laws of GPT and BERT against the exact optimum",
        "",
        f"- command: `{command}`",
        f"- commit: {stamp}",
        f"- preset `{preset}`: {len(rows)} runs, {wall_hours:.2f} h of run wall time; "
        + ", ".join(f"{k}={v}" for k, v in p.base.items()),
        "- sizes (`num_layers = k`, `d_model = 16 (k + 1)`, `mlp_dim = 4 d_model`, head dim 16), "
        f"N = non-embedding parameters: {shapes}",
        "- budgets (each run's schedule ends at its budget), D = tokens: "
        + ", ".join(f"{s} steps ({t / 1e6:.2f}M)" for s, t in _budgets(rows)),
        f"- fits: Huber (delta 1e-3) on log loss, L-BFGS from 81 starts; 95% intervals from {samples} "
        "bootstrap resamplings of the runs (grid points x seeds); C = 6 N D",
        "",
    ]


def _fixed_e_table(fits: dict[str, dict[str, Any]], name: dict[str, str]) -> list[str]:
    lines = ["## L(N, D) = E + A / N^alpha + B / D^beta, E fixed at the exact optimum", ""]
    header = ["objective", "E (exact)", "A", "alpha", "B", "beta", "N* ~ C^a: a", "D* ~ C^b: b"]
    body = []
    for o, f in fits.items():
        law, bs = f["fixed"], f["fixed_bs"]
        body.append(
            [
                name[o],
                f"{f['E']:.4f}",
                *(_estimate(law, bs, k, fmt) for k, fmt in (("A", ".3g"), ("alpha", ".3f"), ("B", ".3g"))),
                *(_estimate(law, bs, k, ".3f") for k in ("beta", "a", "b")),
            ]
        )
    return lines + markdown_table(header, body)


def _free_e_table(fits: dict[str, dict[str, Any]], name: dict[str, str]) -> list[str]:
    lines = ["", "## E free, as a scaling law is usually fitted: the fitted E against the exact one", ""]
    header = ["objective", "E exact", "E fitted", "error", "alpha", "beta", "a", "b"]
    body = []
    for o, f in fits.items():
        law, bs = f["free"], f["free_bs"]
        body.append(
            [
                name[o],
                f"{f['E']:.4f}",
                _estimate(law, bs, "E", ".4f"),
                f"{law.E - f['E']:+.4f} {_ci([b.E - f['E'] for b in bs], '+.4f')}",
                *(_estimate(law, bs, k, ".3f") for k in ("alpha", "beta", "a", "b")),
            ]
        )
    return lines + markdown_table(header, body)


def _frontier_table(fits: dict[str, dict[str, Any]], name: dict[str, str], levels: np.ndarray) -> list[str]:
    lines = ["", "## The compute-optimal frontier (fixed-E fits) and the gap on the captured fraction", ""]
    header = ["C = 6ND"] + [f"{name[o]} {k}" for o in fits for k in ("N*", "D*", "captured*")]
    header += ["gap, captured* of first - second"] if len(fits) >= 2 else []
    return lines + markdown_table(header, [_frontier_row(fits, C) for C in levels])


def _frontier_row(fits: dict[str, dict[str, Any]], C: float) -> list[str]:
    cells = [f"{C:.3g}"]
    objectives = list(fits)
    for o in objectives:
        f = fits[o]
        n, d = f["fixed"].optimal(C)
        cap = [_captured(b, C, f["E"], f["U"]) for b in f["fixed_bs"]]
        cells += [
            f"{n:,.0f}",
            f"{d:,.0f}",
            f"{_captured(f['fixed'], C, f['E'], f['U']):.3f} {_ci(cap, '.3f')}",
        ]
    if len(fits) >= 2:
        f0, f1 = fits[objectives[0]], fits[objectives[1]]
        gap = _captured(f0["fixed"], C, f0["E"], f0["U"]) - _captured(f1["fixed"], C, f1["E"], f1["U"])
        gaps = [
            _captured(b0, C, f0["E"], f0["U"]) - _captured(b1, C, f1["E"], f1["U"])
            for b0, b1 in zip(f0["fixed_bs"], f1["fixed_bs"], strict=True)
        ]
        cells.append(f"{gap:+.3f} {_ci(gaps, '+.3f')}")
    return cells


def _grid_tables(
    rows: list[dict[str, Any]], fits: dict[str, dict[str, Any]], name: dict[str, str]
) -> list[str]:
    lines = ["", "## Every grid point: eval loss minus E (mean over seeds)", ""]
    budgets = _budgets(rows)
    for o in fits:
        lines += ["", f"{name[o]}:", ""]
        header = ["size \\ tokens"] + [f"{t / 1e6:.2f}M" for _, t in budgets]
        body = []
        for k, _, _, n in _sizes(rows):
            cells = [f"k={k} ({n:,})"]
            for s, _ in budgets:
                vals = [
                    r["eval_loss"] - r["oracle_loss"]
                    for r in rows
                    if r["objective"] == o and r["size"] == k and r["steps"] == s
                ]
                cells.append(f"{np.mean(vals):.4f}" if vals else "")
            body.append(cells)
        lines += markdown_table(header, body)
    return lines
