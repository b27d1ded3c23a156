"""Writes the comparison: compare.md (mean ± std over seeds, with command, commit and seeds),
compare.csv (one line per run, probe accuracy per layer included) and compare.png (eval loss vs
tokens seen and vs training FLOPs, probe accuracy vs layer against both ceilings)."""

from __future__ import annotations

import csv
import datetime
import os
from typing import Any

import numpy as np

from experiments.common import OBJECTIVE_NAMES, Column, cell, commit_stamp, markdown_table

COLUMNS = [
    Column("params", "num_params", 0),
    Column("tokens seen", "tokens_seen", 0),
    Column("tokens predicted", "tokens_predicted", 0),
    Column("train PFLOP", "train_pflop", 4),
    Column("own eval loss", "eval_loss", 4),
    Column("optimum", "eval_oracle_loss", 4),
    Column("captured", "eval_captured", 3),
    Column("next-token captured", "next_token_captured", 3),
    Column("masked-token captured", "masked_captured", 3),
    Column("probe (best layer)", "probe_best", 3),
    Column("filtering ceiling", "probe_filtering", 3),
    Column("smoothing ceiling", "probe_smoothing", 3),
    Column("minimal pairs", "pairs_accuracy", 3),
    Column("pairs: HMM", "pairs_oracle", 3),
    Column("fine-tune", "finetune_accuracy", 3),
    Column("Bayes ceiling", "finetune_bayes", 3),
]


def _by_objective(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        out.setdefault(r["objective"], []).append({**r, "train_pflop": r["train_flops"] / 1e15})
    return out


def _values(runs_: list[dict[str, Any]], key: str) -> list[float]:
    """`key` of each seed's run; None (a view this objective does not have) is left out."""
    return [float(r[key]) for r in runs_ if r.get(key) is not None]


def write(
    results: list[dict[str, Any]], preset: str, seeds: int, out: str, command: str, overrides: dict
) -> str:
    """Writes OUT/compare.md, .csv and .png; returns the path of compare.md."""
    os.makedirs(out, exist_ok=True)
    groups = _by_objective(results)
    first = results[0]
    preset_text = ", ".join(f"{k}={v}" for k, v in overrides.items())
    lines = [
        "# `compare`: GPT vs BERT vs prefix LM vs hybrid, one block, same data and steps (C7, C9)",
        "",
        f"- command: `{command}`",
        f"- commit: {commit_stamp()}; seeds: {', '.join(map(str, range(seeds)))}; "
        f"date: {datetime.date.today().isoformat()}",
        f"- every run: configs/<objective>.py:tiny with {preset_text}",
        "- cells: mean ± std over seeds (sample std). Own eval: each objective's eval on the fixed "
        "HMM eval set (hybrid: its causal view). `captured` = (unigram - loss) / (unigram - optimum).",
        "- next-token view: every position, causal mask; masked-token view: 15% all-[MASK], "
        "bidirectional (the hybrid predicts each from the position before it).",
        f"- probe: linear, hidden HMM state per token, best of layers 0..L; chance (majority) "
        f"{first['probe_majority']:.3f}, token alone {first['probe_token_only']:.3f}. Minimal "
        f"pairs: {first['pairs_oracle']:.3f} for the HMM itself, {first['pairs_unigram']:.3f} for "
        "token frequencies alone. Fine-tune: which of two close HMMs made a 63-symbol sequence.",
        "",
    ]
    body = [
        [OBJECTIVE_NAMES[objective], *(cell(_values(runs_, c.key), c.decimals) for c in COLUMNS)]
        for objective, runs_ in groups.items()
    ]
    lines += markdown_table(["objective", *(c.title for c in COLUMNS)], body)
    layers = sorted({int(k) for r in results for k in r["probe_by_layer"]})
    by_layer = [
        [OBJECTIVE_NAMES[objective], *(cell([r["probe_by_layer"][str(i)] for r in runs_], 3) for i in layers)]
        for objective, runs_ in groups.items()
    ]
    lines += ["", "Probe accuracy by layer (0 = embeddings):", ""]
    lines += markdown_table(["objective", *(f"layer {i}" for i in layers)], by_layer)
    md_path = os.path.join(out, "compare.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    _write_csv(os.path.join(out, "compare.csv"), results, layers)
    _plot(os.path.join(out, "compare.png"), groups, layers)
    return md_path


def _write_csv(path: str, results: list[dict[str, Any]], layers: list[int]) -> None:
    skip = {"curve", "probe_by_layer", "objective", "seed"}
    keys = sorted({k for r in results for k in r} - skip)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["objective", "seed", *keys, *[f"probe_layer{i}" for i in layers]])
        for r in results:
            probe = [r["probe_by_layer"].get(str(i), "") for i in layers]
            w.writerow([r["objective"], r["seed"], *[r.get(k, "") for k in keys], *probe])


def _plot(path: str, groups: dict[str, list[dict[str, Any]]], layers: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = dict(zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for objective, runs_ in groups.items():
        steps = [p["step"] for p in runs_[0]["curve"]]
        loss = np.array([[p["loss"] for p in r["curve"]] for r in runs_])
        r0 = runs_[0]
        tokens = np.array(steps) * r0["tokens_seen"] / r0["curve"][-1]["step"]
        flops = np.array(steps) * r0["flops_per_step"]
        for ax, x in ((axes[0], tokens), (axes[1], flops)):
            ax.plot(x, loss.mean(0), marker="o", color=colors[objective], label=OBJECTIVE_NAMES[objective])
            ax.fill_between(x, loss.min(0), loss.max(0), color=colors[objective], alpha=0.2)
            ax.axhline(r0["eval_oracle_loss"], color=colors[objective], ls="--", lw=0.8)
        acc = np.array([[r["probe_by_layer"][str(i)] for i in layers] for r in runs_])
        axes[2].errorbar(
            layers,
            acc.mean(0),
            yerr=acc.std(0),
            marker="o",
            color=colors[objective],
            label=OBJECTIVE_NAMES[objective],
        )
    r0 = next(iter(groups.values()))[0]
    axes[0].set_xlabel("tokens seen")
    axes[1].set_xlabel("training FLOPs")
    for ax in axes[:2]:
        ax.set_ylabel("own eval loss (dashed: exact optimum)")
        ax.legend(fontsize=8)
    axes[2].axhline(r0["probe_filtering"], color="k", ls="--", lw=0.8, label="filtering ceiling (left)")
    axes[2].axhline(r0["probe_smoothing"], color="k", ls=":", lw=0.8, label="smoothing ceiling (both)")
    axes[2].axhline(r0["probe_token_only"], color="gray", ls="-.", lw=0.8, label="token alone")
    axes[2].set_xlabel("layer (0 = embeddings)")
    axes[2].set_ylabel("HMM state probe accuracy")
    axes[2].set_xticks(layers)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
