"""Fitting `L(N, D) = E + A / N^alpha + B / D^beta` to a grid of runs, with E fixed or free.

The fit follows Hoffmann et al. (2022, approach 3): a Huber loss (delta 1e-3) on the difference
of log losses, minimised with L-BFGS from a grid of starting points, the best fit kept; A and B
(and E when free) are fitted through their logs. Intervals come from a bootstrap over the runs
(grid points x seeds, resampled with replacement). The compute-optimal frontier under
`C = 6 N D` follows in closed form (Hoffmann et al., eq. 4):

    N*(C) = G (C/6)^a,  D*(C) = (C/6)^b / G,  a = beta / (alpha + beta),  b = alpha / (alpha + beta),
    G = (alpha A / (beta B))^(1 / (alpha + beta)).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy import optimize

HUBER_DELTA = 1e-3


@dataclasses.dataclass(frozen=True)
class Law:
    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, N: np.ndarray, D: np.ndarray) -> np.ndarray:
        return (
            self.E + self.A / np.asarray(N, float) ** self.alpha + self.B / np.asarray(D, float) ** self.beta
        )

    @property
    def a(self) -> float:
        """N*(C) grows as C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D*(C) grows as C^b."""
        return self.alpha / (self.alpha + self.beta)

    def optimal(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N*, D*) minimising the law at compute `C = 6 N D`."""
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        x = np.asarray(C, float) / 6.0
        return G * x**self.a, x**self.b / G


def _huber(r: np.ndarray) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (a - 0.5 * HUBER_DELTA))


def fit_law(
    N: np.ndarray, D: np.ndarray, L: np.ndarray, E: float | None = None, init: Law | None = None
) -> Law:
    """The law closest to the losses `L` of runs with `N` parameters and `D` tokens; `E` fixed
    when given (it must lie below every loss), else fitted. Starts from a grid of 81 points, or
    from `init` alone (the bootstrap starts each resample from the full fit)."""
    logN, logD, logL = (np.log(np.asarray(x, float)) for x in (N, D, L))
    if E is not None and not E < np.min(L):
        raise ValueError(f"E={E} must be below every loss (min {np.min(L)})")

    def unpack(p: np.ndarray) -> tuple[float, float, float, float, float]:
        a, alpha, b, beta = p[:4]
        e = np.log(E) if E is not None else p[4]
        return e, a, alpha, b, beta

    def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
        """The loss and its gradient in (a, alpha, b, beta[, e])."""
        e, a, alpha, b, beta = unpack(p)
        # log(E + A N^-alpha + B D^-beta) as a log-sum-exp, stable for any parameters.
        t1, t2 = a - alpha * logN, b - beta * logD
        lse = np.logaddexp(np.logaddexp(e, t1), t2)
        r = lse - logL
        dr = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # d huber / d r
        g1, g2 = dr * np.exp(t1 - lse), dr * np.exp(t2 - lse)  # d lse / d term, times dr
        grad = [g1.sum(), -(g1 * logN).sum(), g2.sum(), -(g2 * logD).sum()]
        if E is None:
            grad.append((dr * np.exp(e - lse)).sum())
        # Scaled so that L-BFGS's absolute tolerances sit well below a residual of HUBER_DELTA.
        scale = 1.0 / HUBER_DELTA**2
        return float(np.sum(_huber(r)) * scale), np.asarray(grad) * scale

    starts = itertools.product((0.0, 5.0, 10.0), (0.1, 0.5, 1.0), (0.0, 5.0, 10.0), (0.1, 0.5, 1.0))
    e0 = [] if E is not None else [np.log(0.8 * np.min(L))]
    if init is not None:
        starts = [(np.log(init.A), init.alpha, np.log(init.B), init.beta)]
        e0 = [] if E is not None else [np.log(min(init.E, 0.999 * np.min(L)))]
    bounds = [(-20, 40), (0.0, 3.0), (-20, 40), (0.0, 3.0)] + (
        [] if E is not None else [(-10, np.log(np.min(L)))]
    )
    best = None
    for start in starts:
        res = optimize.minimize(
            objective, np.array([*start, *e0]), method="L-BFGS-B", jac=True, bounds=bounds
        )
        if best is None or res.fun < best.fun:
            best = res
    e, a, alpha, b, beta = unpack(best.x)
    return Law(float(np.exp(e)), float(np.exp(a)), float(alpha), float(np.exp(b)), float(beta))


def bootstrap(
    N: np.ndarray,
    D: np.ndarray,
    L: np.ndarray,
    E: float | None,
    samples: int = 200,
    seed: int = 0,
    full: Law | None = None,
) -> list[Law]:
    """Fits to `samples` resamplings (with replacement) of the runs, each started from `full`,
    the fit to all of them (computed here when not given)."""
    rng = np.random.default_rng(seed)
    N, D, L = (np.asarray(x, float) for x in (N, D, L))
    full = full if full is not None else fit_law(N, D, L, E)
    laws = []
    for _ in range(samples):
        pick = rng.integers(0, len(L), len(L))
        laws.append(fit_law(N[pick], D[pick], L[pick], E, init=full))
    return laws


def interval(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval."""
    lo, hi = np.percentile(np.asarray(values, float), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
