"""Scaling laws: the fit recovers a known law from noisy points (E fixed and free), the frontier is
the minimum at fixed compute, the report writes its files, and a 2-size x 2-budget grid runs end
to end, resumes without retraining and gives the same numbers with --jobs 2."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from conftest import MICRO_OVERRIDES

from experiments.scaling import __main__ as scaling
from experiments.scaling import grid, report
from experiments.scaling.fit import Law, bootstrap, fit_law, interval

TRUE = Law(E=2.3, A=40.0, alpha=0.35, B=300.0, beta=0.4)


def _synthetic(law: Law, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    N = np.tile(np.repeat(np.geomspace(1e4, 5e5, 5), 4), 2)  # 5 sizes x 4 budgets x 2 seeds
    D = np.tile(np.geomspace(4e5, 4e6, 4), 10)
    return N, D, law.loss(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, len(N)))


def test_the_fit_recovers_a_known_law_from_noisy_points():
    N, D, L = _synthetic(TRUE, noise=0.003)
    fixed = fit_law(N, D, L, E=TRUE.E)
    assert fixed.alpha == pytest.approx(TRUE.alpha, abs=0.03) and fixed.beta == pytest.approx(
        TRUE.beta, abs=0.03
    )
    assert fixed.A == pytest.approx(TRUE.A, rel=0.3) and fixed.B == pytest.approx(TRUE.B, rel=0.3)
    free = fit_law(N, D, L)
    assert free.E == pytest.approx(TRUE.E, abs=0.05)
    # Without noise both are exact.
    exact = fit_law(*_synthetic(TRUE, noise=0.0), E=TRUE.E)
    assert exact.alpha == pytest.approx(TRUE.alpha, rel=1e-3) and exact.beta == pytest.approx(
        TRUE.beta, rel=1e-3
    )
    # The bootstrap interval covers the truth.
    laws = bootstrap(N, D, L, TRUE.E, samples=40)
    lo, hi = interval([b.alpha for b in laws])
    assert lo <= TRUE.alpha <= hi and hi - lo < 0.1


def test_the_frontier_is_the_minimum_at_fixed_compute():
    for C in (1e12, 1e15):
        N = np.geomspace(1e2, 1e9, 20001)
        numeric = N[np.argmin(TRUE.loss(N, C / (6 * N)))]
        n_opt, d_opt = TRUE.optimal(C)
        assert n_opt == pytest.approx(numeric, rel=2e-3) and 6 * n_opt * d_opt == pytest.approx(C)
    assert TRUE.a + TRUE.b == pytest.approx(1.0)


def _rows(law: Law, objective: str, E: float) -> list[dict]:
    N, D, L = _synthetic(law, noise=0.002)
    return [
        {
            "objective": objective,
            "size": int(i % 20 // 4) + 1,
            "num_layers": int(i % 20 // 4) + 1,
            "d_model": 32,
            "steps": int(d / 4096),
            "seed": i // 20,
            "params": int(n),
            "tokens": int(d),
            "compute": 6 * n * d,
            "model_flops": 6 * n * d,
            "eval_loss": float(loss),
            "oracle_loss": E,
            "unigram_loss": E + 1.0,
            "captured": 0.0,
            "wall_seconds": 1.0,
        }
        for i, (n, d, loss) in enumerate(zip(N, D, L, strict=True))
    ]


@pytest.mark.slow
def test_the_report_writes_its_tables_and_plots(tmp_path):
    rows = _rows(TRUE, "clm", TRUE.E) + _rows(Law(2.5, 20.0, 0.3, 100.0, 0.3), "mlm", 2.5)
    md = report.write(rows, "cpu", 2, str(tmp_path), "python -m experiments.scaling --test", samples=10)
    text = open(md).read()
    assert "E fixed at the exact optimum" in text and "E free" in text and "gap" in text
    assert "## The observed frontier" in text
    # The grid's own best point per compute bin moves to larger models as compute grows.
    best = report.observed_frontier(rows, "clm")
    assert len(best) >= 3 and best[-1]["N"] > best[0]["N"] and best[-1]["C"] > best[0]["C"]
    assert "| GPT | 2.3000 |" in text and "| BERT | 2.5000 |" in text
    for name in ("scaling.csv", "scaling.png", "scaling_frontier.png"):
        assert os.path.getsize(tmp_path / name) > 0
    assert len(list(csv.DictReader(open(tmp_path / "scaling.csv")))) == len(rows)


@pytest.mark.slow
def test_a_small_grid_runs_end_to_end_resumes_and_jobs_do_not_change_it(tmp_path, monkeypatch):
    # One objective: the grid treats every objective alike, and the report's two-objective
    # sections are checked on synthetic rows above.
    base = {k: v for k, v in MICRO_OVERRIDES.items() if not k.startswith("model.")}
    monkeypatch.setitem(grid.PRESETS, "micro", grid.Preset(sizes=(1, 2), steps=(10, 20), base=base))
    args = ["--preset", "micro", "--seeds", "1", "--bootstrap", "5", "--objectives", "clm"]
    two = str(tmp_path / "two")
    scaling.main([*args, "--out", two, "--jobs", "2"])
    for name in ("scaling.md", "scaling.csv", "scaling.png", "scaling_frontier.png"):
        assert os.path.getsize(os.path.join(two, name)) > 0
    summary = os.path.join(two, "runs", "scaling", "clm", "k2_steps20", "seed0", "summary.json")
    before = os.path.getmtime(summary)
    # The same grid again (what the command runs before its report): everything finished, no
    # training, the same rows.
    keys = ("objective", "size", "steps", "params", "tokens", "eval_loss")
    again = scaling.run_grid("micro", 1, two, {}, ("clm",), 2)
    assert os.path.getmtime(summary) == before
    written = [tuple(r[k] for k in keys) for r in csv.DictReader(open(os.path.join(two, "scaling.csv")))]
    assert [tuple(str(r[k]) for k in keys) for r in again] == written
    # A run made alone gives the numbers it gave beside another.
    monkeypatch.setitem(grid.PRESETS, "micro", grid.Preset(sizes=(1,), steps=(20,), base=base))
    one = scaling.run_grid("micro", 1, str(tmp_path / "one"), {}, ("clm",), 1)
    assert [tuple(str(r[k]) for k in keys) for r in one] == [r for r in written if r[1:3] == ("1", "20")]
    assert len(one) == 1
