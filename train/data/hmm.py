"""The embedded default corpus: a synthetic language from a hidden Markov model, with exact optima.

Because the generating process is known, the best achievable loss of each objective on a given
eval set is computable exactly:
- causal LM:  mean -log p(x_t | x_<t), by the forward algorithm;
- masked LM:  mean -log p(x_t | all unmasked tokens) over masked positions, by forward-backward
              with the masked positions' emissions marginalised out.
The unigram baseline predicts every token from the HMM's position-averaged marginal.

Sparse transitions and emissions make context informative: with the defaults the optimum is
well under 0.7x the unigram loss for both objectives, so "captured" separates models that learn
the structure from ones that learn token frequencies.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class HMMSpec:
    """A sparse random HMM: each state has `transition_support` successors and emits
    `emission_support` symbols, with Dirichlet(`concentration`) weights drawn from `seed`."""

    num_states: int = 32
    num_symbols: int = 128
    transition_support: int = 4  # non-zero successors per state
    emission_support: int = 8  # non-zero symbols per state
    concentration: float = 0.5  # Dirichlet alpha for the non-zero weights
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.transition_support <= self.num_states:
            raise ValueError("hmm.transition_support must be in [1, hmm.num_states]")
        if not 1 <= self.emission_support <= self.num_symbols:
            raise ValueError("hmm.emission_support must be in [1, hmm.num_symbols]")
        if self.concentration <= 0:
            raise ValueError("hmm.concentration must be > 0")


class HMM:
    """Parameters `pi [S]`, `A [S, S]` (row: from-state), `B [S, V]`, all float64."""

    def __init__(self, spec: HMMSpec):
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 0xC0FFEE])
        S, V = spec.num_states, spec.num_symbols
        self.pi = np.full(S, 1.0 / S)
        self.A = self._sparse_rows(rng, S, S, spec.transition_support, spec.concentration)
        self.B = self._sparse_rows(rng, S, V, spec.emission_support, spec.concentration)

    @staticmethod
    def _sparse_rows(rng, rows: int, cols: int, support: int, alpha: float) -> np.ndarray:
        out = np.zeros((rows, cols))
        for r in range(rows):
            idx = rng.choice(cols, size=support, replace=False)
            # A floor keeps every allowed transition/emission observable in finite data.
            w = rng.dirichlet(np.full(support, alpha)) + 1e-3
            out[r, idx] = w / w.sum()
        return out

    def sample(self, rng: np.random.Generator, num: int, length: int) -> np.ndarray:
        """Symbol sequences `[num, length]` (ids in [0, num_symbols))."""
        return self.sample_with_states(rng, num, length)[0]

    def sample_with_states(
        self, rng: np.random.Generator, num: int, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(symbols, hidden states), both int32 `[num, length]`; symbols are exactly `sample`'s.

        The states are what a probe is asked to recover. They are recorded, not drawn, so the
        random stream (and with it every training batch and eval set) is the one `sample` uses.
        """
        A_cdf, B_cdf = np.cumsum(self.A, 1), np.cumsum(self.B, 1)
        z = rng.choice(self.spec.num_states, size=num, p=self.pi)
        out = np.empty((num, length), np.int32)
        states = np.empty((num, length), np.int32)
        u = rng.random((length, 2, num))
        for t in range(length):
            states[:, t] = z
            out[:, t] = np.minimum((u[t, 0, :, None] >= B_cdf[z]).sum(1), self.spec.num_symbols - 1)
            z = np.minimum((u[t, 1, :, None] >= A_cdf[z]).sum(1), self.spec.num_states - 1)
        return out, states

    def marginal(self, length: int) -> np.ndarray:
        """The token distribution averaged over positions 1..length: the unigram predictor."""
        p_state, acc = self.pi.copy(), np.zeros(self.spec.num_states)
        for _ in range(length):
            acc += p_state
            p_state = p_state @ self.A
        return (acc / length) @ self.B

    def forward_backward(self, x_NT: np.ndarray, observed_NT: np.ndarray):
        """Scaled forward-backward. Unobserved positions have emission likelihood 1 (marginalised).

        Returns (alpha [N,T,S] = p(z_t | x_<=t) filtered, beta [N,T,S] normalised per step,
        log_c [N,T] = log p(x_t | x_<t)); alpha * beta, renormalised, is p(z_t | all observed x).
        """
        N, T = x_NT.shape
        S = self.spec.num_states
        e_NTS = np.where(observed_NT[..., None], self.B.T[x_NT], 1.0)
        alpha = np.empty((N, T, S))
        log_c = np.empty((N, T))
        a = self.pi[None] * e_NTS[:, 0]
        for t in range(T):
            if t:
                a = (alpha[:, t - 1] @ self.A) * e_NTS[:, t]
            c = a.sum(1)
            alpha[:, t] = a / c[:, None]
            log_c[:, t] = np.log(c)
        beta = np.empty((N, T, S))
        beta[:, T - 1] = 1.0
        for t in range(T - 2, -1, -1):
            b = (beta[:, t + 1] * e_NTS[:, t + 1]) @ self.A.T
            beta[:, t] = b / b.sum(1, keepdims=True)
        return alpha, beta, log_c

    def clm_nll(self, x_NT: np.ndarray) -> np.ndarray:
        """-log p(x_t | x_<t) for every position, `[N, T]`."""
        _, _, log_c = self.forward_backward(x_NT, np.ones_like(x_NT, bool))
        return -log_c

    def mlm_nll(self, x_NT: np.ndarray, masked_NT: np.ndarray) -> np.ndarray:
        """-log p(x_t | unmasked tokens) at masked positions (0 elsewhere), `[N, T]`."""
        alpha, beta, _ = self.forward_backward(x_NT, ~masked_NT)
        post_NTS = alpha * beta
        post_NTS /= post_NTS.sum(-1, keepdims=True)
        p_true_NT = np.einsum("nts,snt->nt", post_NTS, self.B[:, x_NT])
        return np.where(masked_NT, -np.log(np.where(masked_NT, p_true_NT, 1.0)), 0.0)

    def filtered_states(self, x_NT: np.ndarray) -> np.ndarray:
        """p(z_t | x_1..x_t), `[N, T, S]`: what a reader of the left context can know."""
        alpha, _, _ = self.forward_backward(x_NT, np.ones_like(x_NT, bool))
        return alpha

    def smoothed_states(self, x_NT: np.ndarray) -> np.ndarray:
        """p(z_t | x_1..x_T), `[N, T, S]`: what a reader of the whole sequence can know."""
        alpha, beta, _ = self.forward_backward(x_NT, np.ones_like(x_NT, bool))
        post_NTS = alpha * beta
        return post_NTS / post_NTS.sum(-1, keepdims=True)

    def state_ceilings(self, x_NT: np.ndarray, z_NT: np.ndarray) -> dict[str, float]:
        """Accuracy of the Bayes-optimal guess of z_t from the left context vs from both sides.

        These bound any probe of hidden states on these sequences: a causal model's features at
        t see only x_<=t (filtering), a bidirectional model's see all of x (smoothing).
        """
        return {
            "filtering": float((self.filtered_states(x_NT).argmax(-1) == z_NT).mean()),
            "smoothing": float((self.smoothed_states(x_NT).argmax(-1) == z_NT).mean()),
        }

    def log_likelihood(self, x_NT: np.ndarray) -> np.ndarray:
        """log p(x_1..x_T) per sequence, `[N]`; -inf for a sequence this HMM cannot emit.

        Its own forward pass rather than `forward_backward`'s, whose normaliser divides by zero
        (NaN) on an impossible sequence; a likelihood ratio needs that case to be -inf.
        """
        e_NTS = self.B.T[x_NT]
        log_p_N = np.zeros(len(x_NT))
        a_NS = np.broadcast_to(self.pi, e_NTS[:, 0].shape)
        with np.errstate(divide="ignore"):
            for t in range(x_NT.shape[1]):
                a_NS = (a_NS @ self.A if t else a_NS) * e_NTS[:, t]
                c_N = a_NS.sum(1)
                log_p_N += np.log(c_N)
                a_NS = a_NS / np.where(c_N > 0, c_N, 1.0)[:, None]
        return log_p_N


# Mixing weight of `perturbed` for the fine-tuning task (experiments/downstream/finetune.py): with
# the default spec, telling a 63-symbol sequence of the base HMM from one of the perturbed HMM has
# a Bayes-optimal accuracy of about 0.86 (0.81 at 0.06, 0.91 at 0.1), well clear of both chance
# and certainty, so a model's accuracy has room on either side.
PAIR_STRENGTH = 0.08


def perturbed(spec: HMMSpec, strength: float, *, transitions: bool = True, emissions: bool = True) -> HMM:
    """A second HMM close to `HMM(spec)`: each row mixed with a re-drawn row of the same support.

    `A' = (1 - strength) A + strength R_A` (and the same for `B`), where each row of `R` puts
    fresh Dirichlet weights on the non-zeros of the base row. Sharing the supports (and the
    start distribution) means no sequence of one HMM is impossible under the other: telling them
    apart takes accumulating weak evidence over the whole sequence, never spotting one
    forbidden token pair, and `strength` sets how hard that is.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must be in [0, 1]")
    hmm = HMM(spec)
    rng = np.random.default_rng([spec.seed, 0x9E7B])

    def redraw(P: np.ndarray) -> np.ndarray:
        R = np.zeros_like(P)
        for r in range(len(P)):
            idx = np.flatnonzero(P[r])
            w = rng.dirichlet(np.full(len(idx), spec.concentration)) + 1e-3
            R[r, idx] = w / w.sum()
        return R

    R_A, R_B = redraw(hmm.A), redraw(hmm.B)
    if transitions:
        hmm.A = (1.0 - strength) * hmm.A + strength * R_A
    if emissions:
        hmm.B = (1.0 - strength) * hmm.B + strength * R_B
    return hmm
