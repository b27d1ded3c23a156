"""Hidden-state references of the HMM against brute force, and linear probes on frozen features."""

import hashlib
import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from flax import nnx

from experiments.downstream.probes import (
    fit_linear_probe,
    hmm_state_probe,
    probe_accuracy,
    probe_features,
    token_only_accuracy,
)
from models.registry import make_model, model_config
from train.data.hmm import HMM, HMMSpec
from train.data.sources import hmm_rows
from train.tokenizer.vocab import NUM_SPECIAL

T = 4
TINY = HMMSpec(num_states=3, num_symbols=4, transition_support=2, emission_support=3, concentration=1.0)


def _path_probability(hmm: HMM, x, z) -> float:
    """p(x_1..x_n, z_1..z_n) of one state path, for a prefix of any length n."""
    p = hmm.pi[z[0]] * hmm.B[z[0], x[0]]
    for t in range(1, len(x)):
        p *= hmm.A[z[t - 1], z[t]] * hmm.B[z[t], x[t]]
    return p


def _brute_force(hmm: HMM, x) -> tuple[float, np.ndarray, np.ndarray]:
    """(p(x), filtered [T, S], smoothed [T, S]) by summing over every state path."""
    S = hmm.spec.num_states
    filtered, smoothed = np.zeros((T, S)), np.zeros((T, S))
    for t in range(T):
        for z in itertools.product(range(S), repeat=t + 1):
            filtered[t, z[t]] += _path_probability(hmm, x[: t + 1], z)
    p_x = 0.0
    for z in itertools.product(range(S), repeat=T):
        p = _path_probability(hmm, x, z)
        p_x += p
        for t in range(T):
            smoothed[t, z[t]] += p
    return p_x, filtered / filtered.sum(1, keepdims=True), smoothed / p_x


@pytest.fixture(scope="module", params=[0, 1])
def tiny(request):
    hmm = HMM(HMMSpec(**{**TINY.__dict__, "seed": request.param}))
    x, z = hmm.sample_with_states(np.random.default_rng(3), 30, T)
    return hmm, x, z, [_brute_force(hmm, row) for row in x]


def test_posteriors_and_likelihood_match_brute_force(tiny):
    hmm, x, _, brute = tiny
    np.testing.assert_allclose(hmm.log_likelihood(x), [np.log(b[0]) for b in brute], rtol=1e-10)
    np.testing.assert_allclose(hmm.filtered_states(x), [b[1] for b in brute], atol=1e-12)
    np.testing.assert_allclose(hmm.smoothed_states(x), [b[2] for b in brute], atol=1e-12)


def test_state_ceilings_are_bayes_accuracies(tiny):
    hmm, x, z, brute = tiny
    filtering = np.mean([b[1].argmax(-1) == z_n for b, z_n in zip(brute, z, strict=True)])
    smoothing = np.mean([b[2].argmax(-1) == z_n for b, z_n in zip(brute, z, strict=True)])
    assert hmm.state_ceilings(x, z) == pytest.approx({"filtering": filtering, "smoothing": smoothing})


def test_an_impossible_sequence_has_log_likelihood_minus_infinity(tiny):
    hmm = tiny[0]
    never = np.flatnonzero(hmm.B[0] == 0)[0]  # a symbol state 0 never emits
    hmm0 = HMM(hmm.spec)
    hmm0.pi = np.eye(hmm.spec.num_states)[0]  # always starts in state 0
    ll = hmm0.log_likelihood(np.array([[never, 0, 0, 0], [0, 0, 0, 0]]))
    assert ll[0] == -np.inf and not np.isnan(ll).any()


def test_sample_with_states_keeps_the_symbol_stream_and_gives_possible_paths(tiny):
    hmm = tiny[0]
    x, z = hmm.sample_with_states(np.random.default_rng(9), 50, T)
    np.testing.assert_array_equal(x, hmm.sample(np.random.default_rng(9), 50, T))
    assert x.dtype == z.dtype == np.int32
    assert all(_path_probability(hmm, x_n, z_n) > 0 for x_n, z_n in zip(x, z, strict=True))


def test_sample_is_unchanged_from_before_states_were_recorded():
    """Outputs of the original `HMM.sample`, saved before it became `sample_with_states`."""
    hmm = HMM(HMMSpec())
    want = [
        [9, 81, 90, 123, 78, 28, 28, 53, 97, 82, 24, 67],
        [57, 18, 28, 126, 82, 22, 74, 76, 104, 67, 90, 76],
        [97, 126, 28, 113, 16, 18, 24, 22, 70, 46, 123, 6],
        [31, 58, 70, 124, 6, 28, 46, 46, 23, 82, 22, 92],
    ]
    np.testing.assert_array_equal(hmm.sample(np.random.default_rng(123), 4, 12), want)
    big = hmm.sample(np.random.default_rng([7, 8]), 64, 100)
    assert hashlib.sha256(big.tobytes()).hexdigest() == (
        "ab82f2ce6bd507d5555097616d59f30be14905efeb217cb5bfa9c17a68b25d9e"
    )
    tiny1 = HMM(HMMSpec(**{**TINY.__dict__, "seed": 1}))
    want1 = [[1, 3, 3, 1, 3, 3], [0, 2, 2, 3, 3, 1], [2, 1, 3, 0, 0, 1]]
    np.testing.assert_array_equal(tiny1.sample(np.random.default_rng(5), 3, 6), want1)


@pytest.mark.slow
def test_probe_recovers_a_planted_linear_feature_and_not_random_labels():
    rng = np.random.default_rng(0)
    # Unequal feature scales: standardising is what lets a lightly regularised probe fit them.
    x_ND = (rng.normal(size=(4000, 16)) * rng.uniform(0.1, 10.0, 16)).astype(np.float32)
    labels_N = (x_ND @ rng.normal(size=(16, 5))).argmax(1)
    params = fit_linear_probe(x_ND[:3000], labels_N[:3000], 5, seed=0)
    assert probe_accuracy(params, x_ND[3000:], labels_N[3000:]) > 0.95
    random_N = rng.integers(0, 5, 4000)
    params = fit_linear_probe(x_ND[:3000], random_N[:3000], 5, seed=0)
    assert probe_accuracy(params, x_ND[3000:], random_N[3000:]) < 0.3  # chance is 0.2


def _micro_model(seed: int = 0):
    c = micro_config("clm")
    return make_model(model_config(c, NUM_SPECIAL + c.hmm.num_symbols), nnx.Rngs(seed)), c


@pytest.mark.slow
def test_hmm_state_probe_reports_every_layer_and_ordered_ceilings():
    model, c = _micro_model()
    hmm = HMM(HMMSpec(num_states=c.hmm.num_states, num_symbols=c.hmm.num_symbols))
    result = hmm_state_probe(model, "bidirectional", hmm, num_train=64, num_eval=32, seq_len=32, steps=30)
    assert sorted(result["accuracy"]) == [0, 1, 2]
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
    assert result["num_eval_tokens"] == 32 * 31
    assert 0.0 < result["majority"] <= result["token_only"] <= result["filtering"] <= result["smoothing"] <= 1
    last = hmm_state_probe(
        model, "causal", hmm, num_train=64, num_eval=32, seq_len=32, steps=30, layers=(-1,)
    )
    assert list(last["accuracy"]) == [2]


def test_token_only_accuracy_is_the_best_context_free_guess():
    hmm = HMM(TINY)
    x, z = hmm.sample_with_states(np.random.default_rng(0), 2000, T)
    # Brute force: for each (position, symbol), the most frequent true state is the best guess.
    best = (
        sum(np.bincount(z[:, t][x[:, t] == v], minlength=3).max() for t in range(T) for v in range(4))
        / z.size
    )
    assert token_only_accuracy(hmm, x, z) == pytest.approx(best, abs=0.02)


def test_causal_features_ignore_later_tokens_and_bidirectional_ones_do_not():
    model, c = _micro_model()
    rng = np.random.default_rng(0)
    rows = hmm_rows(rng.integers(0, c.hmm.num_symbols, (4, 15)).astype(np.int32))
    changed = {**rows, "tokens": rows["tokens"].copy()}
    t = 7
    changed["tokens"][:, t + 1 :] = NUM_SPECIAL + (changed["tokens"][:, t + 1 :] - NUM_SPECIAL + 1) % 16
    args = lambda r: (r["tokens"], r["segment_ids"], r["positions"])  # noqa: E731
    for layer in range(c.model.num_layers + 1):
        before = probe_features(model, *args(rows), "causal", layer)
        after = probe_features(model, *args(changed), "causal", layer)
        np.testing.assert_allclose(before[:, : t + 1], after[:, : t + 1], atol=1e-6)
        assert not np.allclose(before[:, t + 1 :], after[:, t + 1 :])
    bidir = [probe_features(model, *args(r), "bidirectional", -1) for r in (rows, changed)]
    assert not np.allclose(bidir[0][:, : t + 1], bidir[1][:, : t + 1])
    np.testing.assert_array_equal(
        probe_features(model, *args(rows), "causal", -1),
        probe_features(model, *args(rows), "causal", c.model.num_layers),
    )
    assert jnp.shape(before) == (4, 16, c.model.d_model)
