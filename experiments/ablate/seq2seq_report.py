"""The seq2seq table's extra outputs: accuracy by source length (C11), attention kinds (C10).

`report.write` calls these when a table's runs carry per-length results (`len{n}_exact`,
`len{n}_token_acc` from `experiments.ablate.measure.seq2seq_by_length`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from experiments.common import cell, markdown_table


def lengths(results: list[dict[str, Any]]) -> list[int]:
    """The source lengths the runs report per-length results for."""
    return sorted({int(m.group(1)) for r in results for k in r if (m := re.fullmatch(r"len(\d+)_exact", k))})


def _values(results: list[dict], slug: str, key: str) -> list[float]:
    return [float(r[key]) for r in results if r["row"].slug == slug and key in r]


def length_section(results: list[dict[str, Any]], settings: list[str]) -> list[str]:
    """Markdown: exact match, then token accuracy, per row and source length."""
    ns = lengths(results)
    rows = list({r["row"].slug: r["row"] for r in results}.values())
    lines = []
    for title, suffix in (
        ("Exact match (greedy decoding reproduces the whole target)", "exact"),
        ("Token accuracy (teacher forcing, target tokens and EOS)", "token_acc"),
    ):
        lines += ["", f"{title}, by source length:", ""]
        lines += markdown_table(
            ["objective", *settings, *(f"n={n}" for n in ns)],
            [
                row.cells + [cell(_values(results, row.slug, f"len{n}_{suffix}"), 3) for n in ns]
                for row in rows
            ],
        )
    return lines


def plot_by_length(path: str, title: str, results: list[dict[str, Any]]) -> None:
    """Exact match and token accuracy against source length, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = lengths(results)
    rows = list({r["row"].slug: r["row"] for r in results}.values())
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, suffix, label in ((axes[0], "exact", "exact match"), (axes[1], "token_acc", "token accuracy")):
        for row in rows:
            vals = [_values(results, row.slug, f"len{n}_{suffix}") for n in ns]
            means = [np.mean(v) for v in vals]
            stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]
            ax.errorbar(
                ns, means, yerr=stds, marker="o", capsize=3, label=" ".join(map(str, row.setting.values()))
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("source length")
        ax.set_ylabel(f"eval {label}")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attention(path: str, attention: dict[str, Any], caption: str) -> None:
    """One row per layer: encoder self-, decoder self- and cross-attention (mean over heads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    kinds = [
        ("encoder", "encoder self-attention\n(bidirectional)", "source", "source"),
        ("decoder", "decoder self-attention\n(causal)", "target (read)", "target (read)"),
        ("cross", "cross-attention\n(Q decoder, K/V encoder)", "target (read)", "source"),
    ]
    layers = len(attention["maps"]["encoder"])
    fig, axes = plt.subplots(layers, 3, figsize=(12, 3.8 * layers), squeeze=False)
    for i in range(layers):
        for j, (kind, name, ylabel, xlabel) in enumerate(kinds):
            ax = axes[i, j]
            ax.imshow(np.asarray(attention["maps"][kind][i]), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {i + 1}: {name}", fontsize=8)
            ax.set_xlabel(f"key: {xlabel}", fontsize=7)
            ax.set_ylabel(f"query: {ylabel}", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
