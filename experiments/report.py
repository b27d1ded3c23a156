"""Writes a table's results: TABLE.md (mean ± std over seeds, with the command, commit and seeds),
TABLE.csv (every run) and TABLE.png (the headline metric per row, or cost vs length)."""

from __future__ import annotations

import csv
import datetime
import os
import subprocess
from typing import Any

import numpy as np

from experiments import runs, seq2seq_report
from experiments.tables import OBJECTIVE_NAMES, PRESETS, Table

# (column title, result key, decimals); a column shows only if some run has the key.
METRICS = [
    ("params", "num_params", 0),
    ("eval loss", "eval_loss", 4),
    ("oracle", "eval_oracle_loss", 4),
    ("captured", "eval_captured", 3),
    ("gap", "eval_gap", 3),
    ("bits/byte", "eval_bits_per_byte", 4),
    ("exact match (all lengths)", "eval_exact_match", 3),
    ("eval loss @15%", "eval15_loss", 4),
    ("captured @15%", "eval15_captured", 3),
    ("train loss", "train_loss", 4),
    ("train - eval", "train_minus_eval", 4),
    ("init entropy", "init_entropy", 3),
    ("init max p", "init_max_prob", 3),
    ("init |dQ,dK|", "init_qk_grad_norm", 4),
    ("s / run", "wall_seconds", 0),
]


def _commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
        return sha + ("+local changes" if dirty else "") if sha else "unknown"
    except OSError:
        return "unknown"


def _cell(values: list[float], decimals: int) -> str:
    if not values:
        return ""
    mean = float(np.mean(values))
    if decimals == 0:
        return f"{mean:,.0f}" + (f" ± {np.std(values, ddof=1):,.0f}" if len(values) > 1 else "")
    spread = f" ± {np.std(values, ddof=1):.{decimals}f}" if len(values) > 1 else ""
    return f"{mean:.{decimals}f}{spread}"


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per row (in table order): the row and, per metric, the values over seeds."""
    by_row: dict[str, dict[str, Any]] = {}
    for r in results:
        r = {**r, "train_minus_eval": r["train_loss"] - r["eval_loss"]}
        entry = by_row.setdefault(r["row"].slug, {"row": r["row"], "values": {}, "seeds": []})
        entry["seeds"].append(r["seed"])
        for _, key, _ in METRICS:
            if key in r:
                entry["values"].setdefault(key, []).append(float(r[key]))
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
    os.makedirs(out, exist_ok=True)
    rows = summarise(results)
    settings = list(rows[0]["row"].setting) if rows else []
    metrics = [m for m in METRICS if any(m[1] in e["values"] for e in rows)]
    config_names = {runs.CONFIG_FILES[e["row"].objective][len("configs/") : -len(".py")] for e in rows}
    preset_text = ", ".join(
        f"{k}={v}" for k, v in {**PRESETS[preset], **table.preset_overrides.get(preset, {})}.items()
    )
    lines = [
        f"# `{table.name}`: {table.title} ({table.claim})",
        "",
        f"- command: `{command}`",
        f"- commit: {_commit()}; seeds: {', '.join(map(str, range(seeds)))}; "
        f"date: {datetime.date.today().isoformat()}",
        f"- preset `{preset}` on top of configs/{{{','.join(sorted(config_names))}}}.py:tiny: {preset_text}",
        "- cells: mean ± std over seeds (sample std); eval on the fixed eval set of the run's dataset "
        "(the embedded HMM corpus unless the preset names another)",
        "",
        "| objective | " + " | ".join(settings) + " | " + " | ".join(m[0] for m in metrics) + " |",
        "|---" * (1 + len(settings) + len(metrics)) + "|",
    ]
    for e in rows:
        row = e["row"]
        cells = [OBJECTIVE_NAMES[row.objective]] + [str(v) for v in row.setting.values()]
        cells += [_cell(e["values"].get(key, []), dec) for _, key, dec in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    if timing:
        lengths = sorted({t["seq_len"] for t in timing})
        lines += [
            "",
            "Train step time (ms) and tokens/s at batch 8, by sequence length:",
            "",
            "| objective | " + " | ".join(settings) + " | " + " | ".join(f"L={n}" for n in lengths) + " |",
            "|---" * (1 + len(settings) + len(lengths)) + "|",
        ]
        for e in rows:
            row = e["row"]
            cells = [OBJECTIVE_NAMES[row.objective]] + [str(v) for v in row.setting.values()]
            for n in lengths:
                t = next(t for t in timing if t["row"].slug == row.slug and t["seq_len"] == n)
                cells.append(f"{1000 * t['step_seconds']:.1f} ms, {t['tokens_per_sec']:,.0f}/s")
            lines.append("| " + " | ".join(cells) + " |")
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


def _write_csv(path: str, results: list[dict], timing: list[dict], settings: list[str]) -> None:
    keys = sorted({k for r in results for k in r} - {"row", "seed"})
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
    fig, axes = plt.subplots(1, 2 if timing else 1, figsize=(12 if timing else 8, 4.5), squeeze=False)
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
