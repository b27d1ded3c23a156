"""The scaling plots: loss minus E against N and D with the fits, iso-FLOP curves and the frontier."""

from __future__ import annotations

from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _means(f: dict[str, Any]) -> list[tuple[float, float, float]]:
    """(N, D, mean loss over seeds) per grid point."""
    points = sorted(set(zip(f["N"], f["D"], strict=True)))
    return [(n, d, float(np.mean(f["L"][(f["N"] == n) & (f["D"] == d)]))) for n, d in points]


def curves(path: str, fits: dict[str, dict[str, Any]], name: dict[str, str]) -> None:
    """Per objective (a row): loss - E against N (a line per budget) and against D (per size)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(fits), 2, figsize=(11, 4 * len(fits)), squeeze=False)
    for row, (o, f) in enumerate(fits.items()):
        law, pts = f["fixed"], _means(f)
        for col, (x_of, other_of, xlabel) in enumerate(
            ((0, 1, "non-embedding parameters N"), (1, 0, "tokens D"))
        ):
            ax = axes[row, col]
            for k, other in enumerate(sorted({p[other_of] for p in pts})):
                mine = sorted((p[x_of], p[2] - f["E"]) for p in pts if p[other_of] == other)
                ax.plot(*zip(*mine, strict=True), "o", color=f"C{k}")
                xs = np.geomspace(mine[0][0], mine[-1][0], 50)
                args = (xs, np.full_like(xs, other)) if col == 0 else (np.full_like(xs, other), xs)
                label = f"D={other / 1e6:.2f}M" if col == 0 else f"N={other:,.0f}"
                ax.plot(xs, law.loss(*args) - f["E"], "-", color=f"C{k}", label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("eval loss - E (exact optimum)")
            ax.set_title(f"{name[o]}: alpha={law.alpha:.3f}, beta={law.beta:.3f} (E fixed)", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frontier(path: str, fits: dict[str, dict[str, Any]], name: dict[str, str], levels: np.ndarray) -> None:
    """Iso-FLOP curves (loss against N at fixed C), N* and D* against C, captured* against C."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    styles = ["-", "--", ":", "-."]
    C_line = np.geomspace(levels[0], levels[-1], 50)
    for j, (o, f) in enumerate(fits.items()):
        law, style = f["fixed"], styles[j % len(styles)]
        for k, C in enumerate(levels):
            n_opt, _ = law.optimal(C)
            N = np.geomspace(n_opt / 30, n_opt * 30, 60)
            axes[0].plot(N, law.loss(N, C / (6 * N)), style, color=f"C{k}", label=f"{name[o]} C={C:.2g}")
            axes[0].plot([n_opt], [law.loss(n_opt, C / (6 * n_opt))], "k.", ms=5)
        n_opt, d_opt = law.optimal(C_line)
        axes[1].plot(C_line, n_opt, style, color="C0", label=f"{name[o]} N* ~ C^{law.a:.2f}")
        axes[1].plot(C_line, d_opt, style, color="C1", label=f"{name[o]} D* ~ C^{law.b:.2f}")
        caps = np.array([(f["U"] - b.loss(*b.optimal(C_line))) / (f["U"] - f["E"]) for b in f["fixed_bs"]])
        cap = (f["U"] - law.loss(n_opt, d_opt)) / (f["U"] - f["E"])
        axes[2].plot(C_line, cap, style, color=f"C{j}", label=name[o])
        axes[2].fill_between(C_line, *np.percentile(caps, [2.5, 97.5], axis=0), color=f"C{j}", alpha=0.2)
        axes[2].scatter(f["C"], (f["U"] - f["L"]) / (f["U"] - f["E"]), s=8, color=f"C{j}", alpha=0.5)
    axes[0].set(xscale="log", xlabel="N", ylabel="fitted eval loss", title="iso-FLOP curves (dots: optimum)")
    axes[1].set(xscale="log", yscale="log", xlabel="C = 6ND", title="compute-optimal N* and D*")
    axes[2].set(
        xscale="log",
        xlabel="C = 6ND",
        ylabel="captured fraction",
        title="captured at the frontier (dots: runs)",
    )
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
