"""Writes a table's results: TABLE.md (mean ± std over seeds, with the command, commit and seeds),
TABLE.csv (every run) and TABLE.png (the headline metric per row, or cost vs length)."""

from __future__ import annotations

import csv
import datetime
import os
from typing import Any

import numpy as np

import configs
from experiments.ablate import seq2seq_report
from experiments.ablate.tables import PRESETS, Table
from experiments.common import OBJECTIVE_NAMES, Column, cell, commit_stamp, markdown_table

# A column shows only if some run has its key.
METRICS = [
    Column("params", "num_params", 0),
    Column("eval loss", "eval_loss", 4),
    Column("oracle", "eval_oracle_loss", 4),
    Column("captured", "eval_captured", 3),
    Column("gap", "eval_gap", 3),
    Column("bits/byte", "eval_bits_per_byte", 4),
    Column("exact match (all lengths)", "eval_exact_match", 3),
    Column("eval loss @15%", "eval15_loss", 4),
    Column("captured @15%", "eval15_captured", 3),
    Column("train loss", "train_loss", 4),
    Column("train - eval", "train_minus_eval", 4),
    Column("init entropy", "init_entropy", 3),
    Column("init max p", "init_max_prob", 3),
    Column("init |dQ,dK|", "init_qk_grad_norm", 4),
    Column("s / run", "wall_seconds", 0),
]


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per row (in table order): the row and, per metric, the values over seeds."""
    by_row: dict[str, dict[str, Any]] = {}
    for r in results:
        r = {**r, "train_minus_eval": r["train_loss"] - r["eval_loss"]}
        entry = by_row.setdefault(r["row"].slug, {"row": r["row"], "values": {}, "seeds": [], "grads": []})
        entry["seeds"].append(r["seed"])
        if r.get("grad_trajectory"):
            entry["grads"].append(r["grad_trajectory"])
        for column in METRICS:
            if column.key in r:
                entry["values"].setdefault(column.key, []).append(float(r[column.key]))
    return list(by_row.values())


def write(
    table: Table,
    preset: str,
    seeds: int,
    out: str,
    results: list[dict],
    timing: list[dict],
    command: str,
    attention: dict[str, Any] | None = None,
) -> str:
    """Writes OUT/TABLE.md, .csv and .png (and TABLE_attention.png with `attention`); returns the
    path of TABLE.md."""
    os.makedirs(out, exist_ok=True)
    rows = summarise(results)
    settings = list(rows[0]["row"].setting) if rows else []
    metrics = [m for m in METRICS if any(m.key in e["values"] for e in rows)]
    config_names = {
        configs.FILES[e["row"].objective].removeprefix("configs/").removesuffix(".py") for e in rows
    }
    preset_text = ", ".join(
        f"{k}={v}" for k, v in {**PRESETS[preset], **table.preset_overrides.get(preset, {})}.items()
    )
    lines = [
        f"# `{table.name}`: {table.title} ({table.claim})",
        "",
        f"- command: `{command}`",
        f"- commit: {commit_stamp()}; seeds: {', '.join(map(str, range(seeds)))}; "
        f"date: {datetime.date.today().isoformat()}",
        f"- preset `{preset}` on top of configs/{{{','.join(sorted(config_names))}}}.py:tiny: {preset_text}",
        "- cells: mean ± std over seeds (sample std); eval on the fixed eval set of the run's dataset "
        "(the embedded HMM corpus unless the preset names another)",
        "",
    ]
    lines += markdown_table(
        ["objective", *settings, *(m.title for m in metrics)],
        [e["row"].cells + [cell(e["values"].get(m.key, []), m.decimals) for m in metrics] for e in rows],
    )
    if any(e["grads"] for e in rows):
        of = f" ({', '.join(table.grad_kinds)} only)" if table.grad_kinds else ""
        lines += [
            "",
            f"Gradient norm of the first and the last block{of} over training, mean over seeds: the "
            f"right panel of {table.name}.png (each run's `layer_stats.jsonl`, `log_layer_stats=True`).",
        ]
    if timing:
        lines += ["", "Train step time (ms) and tokens/s at batch 8, by sequence length:", ""]
        lines += _timing_table(rows, timing, settings)
    by_length = bool(seq2seq_report.lengths(results))
    if by_length:
        lines += seq2seq_report.length_section(results, settings)
    if attention:
        lines += [
            "",
            f"Attention kinds of one trained encoder-decoder: {table.name}_attention.png "
            f"({attention['caption']}).",
        ]
        seq2seq_report.plot_attention(
            os.path.join(out, f"{table.name}_attention.png"), attention, attention["caption"]
        )
    md_path = os.path.join(out, f"{table.name}.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    _write_csv(os.path.join(out, f"{table.name}.csv"), results, timing, settings)
    if by_length:
        seq2seq_report.plot_by_length(
            os.path.join(out, f"{table.name}.png"), f"{table.name}: {table.title}", results
        )
    else:
        _plot(os.path.join(out, f"{table.name}.png"), table, rows, timing)
    return md_path


def _timing_table(rows: list[dict], timing: list[dict], settings: list[str]) -> list[str]:
    lengths = sorted({t["seq_len"] for t in timing})
    body = []
    for e in rows:
        row = e["row"]
        cells = row.cells
        for n in lengths:
            t = next(t for t in timing if t["row"].slug == row.slug and t["seq_len"] == n)
            cells.append(f"{1000 * t['step_seconds']:.1f} ms, {t['tokens_per_sec']:,.0f}/s")
        body.append(cells)
    return markdown_table(["objective", *settings, *(f"L={n}" for n in lengths)], body)


def _write_csv(path: str, results: list[dict], timing: list[dict], settings: list[str]) -> None:
    keys = sorted({k for r in results for k in r} - {"row", "seed", "grad_trajectory"})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["kind", "objective", *settings, "seed", "seq_len", *keys, "step_seconds", "tokens_per_sec"]
        )
        for r in results:
            row = r["row"]
            w.writerow(
                [
                    "run",
                    row.objective,
                    *row.setting.values(),
                    r["seed"],
                    "",
                    *[r.get(k, "") for k in keys],
                    "",
                    "",
                ]
            )
        for t in timing:
            row = t["row"]
            w.writerow(
                [
                    "timing",
                    row.objective,
                    *row.setting.values(),
                    "",
                    t["seq_len"],
                    *["" for _ in keys],
                    t["step_seconds"],
                    t["tokens_per_sec"],
                ]
            )


def _plot(path: str, table: Table, rows: list[dict], timing: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "eval_captured" if any("eval_captured" in e["values"] for e in rows) else "eval_loss"
    grads = any(e["grads"] for e in rows)
    two = bool(timing) or grads
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(12 if two else 8, 4.5), squeeze=False)
    ax = axes[0, 0]
    labels = [
        f"{OBJECTIVE_NAMES[e['row'].objective]}\n" + "\n".join(map(str, e["row"].setting.values()))
        for e in rows
    ]
    means = [np.mean(e["values"][key]) for e in rows]
    stds = [np.std(e["values"][key], ddof=1) if len(e["values"][key]) > 1 else 0.0 for e in rows]
    colors = ["tab:blue" if e["row"].objective == "clm" else "tab:orange" for e in rows]
    ax.bar(range(len(rows)), means, yerr=stds, color=colors, capsize=3)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel(key.replace("eval_", "eval "))
    ax.set_title(f"{table.name}: {table.title}", fontsize=9)
    if timing:
        ax = axes[0, 1]
        for e in rows:
            pts = sorted((t["seq_len"], t["step_seconds"]) for t in timing if t["row"].slug == e["row"].slug)
            label = f"{OBJECTIVE_NAMES[e['row'].objective]} " + " ".join(map(str, e["row"].setting.values()))
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("train step seconds (batch 8)")
        ax.legend(fontsize=7)
    if grads:
        _plot_grads(axes[0, 1], rows, table.grad_kinds)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_grads(ax, rows: list[dict], kinds: tuple[str, ...]) -> None:
    """Each row's gradient norm of its first and last block over training (mean over seeds)."""
    for k, e in enumerate(rows):
        blocks = sorted(e["grads"][0], key=lambda b: int(b.removeprefix("blocks")))
        label = f"{OBJECTIVE_NAMES[e['row'].objective]} " + " ".join(map(str, e["row"].setting.values()))
        for block, style in zip(dict.fromkeys([blocks[0], blocks[-1]]), ("-", "--"), strict=False):
            per_seed = np.asarray([[v for _, v in g[block]] for g in e["grads"]])
            steps = [s for s, _ in e["grads"][0][block]]
            ax.plot(steps, per_seed.mean(0), style, color=f"C{k}", label=f"{label} {block}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm of the block" + (f" ({', '.join(kinds)})" if kinds else ""))
    ax.legend(fontsize=6, ncol=2)
