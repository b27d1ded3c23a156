"""The embedded corpus: exact optima against brute force, and a default that is a real test."""

import itertools

import numpy as np
import pytest

from configs import bert, gpt
from train.data.hmm import HMM, HMMSpec
from train.data.sources import make_source
from train.loop.evaluator import fixed_eval_set
from train.objectives import CausalLM, make_objective

T = 4


def _joint_table(hmm: HMM) -> np.ndarray:
    """p(x) for every symbol sequence of length T, by summing over every state path."""
    S, V = hmm.spec.num_states, hmm.spec.num_symbols
    table = np.zeros((V,) * T)
    for x in itertools.product(range(V), repeat=T):
        total = 0.0
        for z in itertools.product(range(S), repeat=T):
            p = hmm.pi[z[0]] * hmm.B[z[0], x[0]]
            for t in range(1, T):
                p *= hmm.A[z[t - 1], z[t]] * hmm.B[z[t], x[t]]
            total += p
        table[x] = total
    return table


@pytest.fixture(scope="module", params=[0, 1])
def tiny(request):
    hmm = HMM(
        HMMSpec(
            num_states=3,
            num_symbols=4,
            transition_support=2,
            emission_support=3,
            concentration=1.0,
            seed=request.param,
        )
    )
    return hmm, _joint_table(hmm)


def test_joint_table_is_a_distribution(tiny):
    assert tiny[1].sum() == pytest.approx(1.0, abs=1e-12)


def test_clm_optimum_matches_brute_force(tiny):
    hmm, joint = tiny
    x = hmm.sample(np.random.default_rng(0), 20, T)
    got = hmm.clm_nll(x)
    for n in range(len(x)):
        for t in range(T):
            p_upto = joint[tuple(x[n, : t + 1])].sum()
            p_before = joint[tuple(x[n, :t])].sum() if t else 1.0
            assert got[n, t] == pytest.approx(-np.log(p_upto / p_before), rel=1e-9)


def test_mlm_optimum_matches_brute_force(tiny):
    hmm, joint = tiny
    rng = np.random.default_rng(1)
    x = hmm.sample(rng, 20, T)
    masked = rng.random(x.shape) < 0.5
    masked[:, 1] = True  # at least one masked position everywhere
    got = hmm.mlm_nll(x, masked)
    for n in range(len(x)):
        obs = ~masked[n]
        # Marginalise every masked position, then condition on the observed ones.
        index_obs = tuple(x[n, t] if obs[t] else slice(None) for t in range(T))
        p_obs = joint[index_obs].sum()
        for t in np.flatnonzero(masked[n]):
            index_t = tuple(x[n, s] if (obs[s] or s == t) else slice(None) for s in range(T))
            expected = -np.log(joint[index_t].sum() / p_obs)
            assert got[n, t] == pytest.approx(expected, rel=1e-9)
        assert (got[n, obs] == 0).all()


def test_sampling_is_deterministic_per_seed_and_index(tmp_path):
    source = make_source(gpt.get_config("tiny"), str(tmp_path))
    a, b = source.train_iterator(), source.train_iterator()
    first = next(a)
    np.testing.assert_array_equal(first["tokens"], next(b)["tokens"])
    assert not np.array_equal(first["tokens"], next(a)["tokens"])
    other_seed = gpt.get_config("tiny")
    other_seed.seed = 1
    other = next(make_source(other_seed, str(tmp_path)).train_iterator())
    assert not np.array_equal(first["tokens"], other["tokens"])


def test_iterator_state_resumes_the_stream(tmp_path):
    source = make_source(gpt.get_config("tiny"), str(tmp_path))
    it = source.train_iterator()
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it)["tokens"] for _ in range(2)]
    fresh = source.train_iterator()
    fresh.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(next(fresh)["tokens"], e)


def test_process_shards_partition_the_global_batch(tmp_path):
    source = make_source(gpt.get_config("tiny"), str(tmp_path))
    whole = next(source.train_iterator())["tokens"]
    parts = [next(source.train_iterator(p, 4))["tokens"] for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("module", [gpt, bert])
def test_default_hmm_optimum_is_far_below_unigram(module, tmp_path):
    """Context must matter: the optimum is at most 0.7x the unigram loss for both objectives."""
    config = module.get_config("tiny")
    source = make_source(config, str(tmp_path))
    objective = make_objective(config, source.vocab_size)
    eval_objective, batches, ref = fixed_eval_set(source, objective)
    assert ref["oracle_loss"] <= 0.7 * ref["unigram_loss"], ref
    if isinstance(objective, CausalLM):  # every symbol of every eval sequence is scored
        scored = sum(int(np.asarray(eval_objective.scored_tokens(b)).sum()) for b in batches)
        assert scored == config.hmm.eval_sequences * (config.seq_len - 1)
