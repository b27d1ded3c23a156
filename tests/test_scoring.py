"""Sequence scoring (causal log-likelihood, pseudo-log-likelihood) and minimal pairs (HMM, BLiMP)."""

from __future__ import annotations

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tfds_mock
from conftest import micro_config
from flax import nnx

from experiments.downstream.minimal_pairs import (
    blimp_minimal_pairs,
    hmm_minimal_pairs,
    hmm_unigram_accuracy,
)
from models.errors import ConfigError
from models.masks import make_attention_mask
from models.registry import make_model, model_config
from models.scoring import (
    causal_log_likelihood,
    minimal_pair_accuracy,
    pseudo_log_likelihood,
    score_sequences,
)
from train.data.hmm import HMM, HMMSpec
from train.tokenizer.vocab import BOS_ID, DEFAULT, EOS_ID, MASK_ID, NUM_SPECIAL

IDS = {"mask_id": MASK_ID, "special_ids": DEFAULT.ids}

V = 23  # the micro config's vocab: 7 special ids + 16 HMM symbols
L = 12


def _model(**overrides) -> nnx.Module:
    model = make_model(model_config(micro_config("clm", **overrides), V), nnx.Rngs(0))
    # Larger weights than at init, so predictions are far from uniform and context matters.
    for path, p in nnx.iter_graph(model):
        if isinstance(p, nnx.Param):
            p.value = p.value * 4.0 + 0.01 * jax.random.normal(jax.random.PRNGKey(len(path)), p.value.shape)
    model.eval()
    return model


@pytest.fixture(scope="module")
def model() -> nnx.Module:
    return _model()


def _rows() -> dict[str, np.ndarray]:
    """Full, padded, packed (two documents) rows, with a special token mid-document."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(NUM_SPECIAL, V, size=(4, L)).astype(np.int32)
    tokens[:, 0] = BOS_ID
    seg = np.ones((4, L), np.int32)
    seg[1, 7:] = 0  # padded
    seg[2, 5:] = 2  # a second document from position 5 ...
    seg[2, 10:] = 0  # ... then padding
    tokens[2, 5] = BOS_ID
    tokens[3, 6] = EOS_ID  # context, never a PLL target
    tokens[seg == 0] = 0
    pos = np.zeros((4, L), np.int32)
    for b in range(4):
        for s in set(seg[b]) - {0}:
            idx = np.nonzero(seg[b] == s)[0]
            pos[b, idx] = np.arange(len(idx))
    return {"tokens": tokens, "segment_ids": seg, "positions": pos}


def _documents(rows):
    """(row, token ids, positions) of each document of each row."""
    for b in range(len(rows["tokens"])):
        for s in sorted(set(rows["segment_ids"][b]) - {0}):
            idx = np.nonzero(rows["segment_ids"][b] == s)[0]
            yield b, rows["tokens"][b, idx], rows["positions"][b, idx]


def _reference_forward(model, kind: str):
    """`(tokens_T, positions_T) -> logits [T, V]` of one document alone (jitted: one compile per T)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens_1T, positions_1T):
        mask = make_attention_mask(kind, jnp.ones_like(tokens_1T))
        return nnx.merge(graphdef, state)(tokens_1T, mask, positions_1T)[0]

    return lambda tokens_T, positions_T: forward(state, tokens_T[None], positions_T[None])


@pytest.mark.slow
def test_causal_log_likelihood_matches_token_by_token_reference(model):
    rows = _rows()
    forward = _reference_forward(model, "causal")
    expected = np.zeros(len(rows["tokens"]))
    for b, doc, pos in _documents(rows):
        for t in range(1, len(doc)):  # the prefix alone, its last position predicting token t
            logits_V = forward(doc[:t], pos[:t])[-1]
            expected[b] += float(jax.nn.log_softmax(logits_V)[doc[t]])
    got = causal_log_likelihood(model, rows["tokens"], rows["segment_ids"], rows["positions"], batch_size=3)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert np.all(got < 0)


def test_pseudo_log_likelihood_matches_one_mask_at_a_time_reference(model):
    rows = _rows()
    forward = _reference_forward(model, "bidirectional")
    expected = np.zeros(len(rows["tokens"]))
    n_masked = 0
    for b, doc, pos in _documents(rows):
        for t in np.nonzero(doc >= NUM_SPECIAL)[0]:
            masked = doc.copy()
            masked[t] = MASK_ID
            logits_V = forward(masked, pos)[t]
            expected[b] += float(jax.nn.log_softmax(logits_V)[doc[t]])
            n_masked += 1
    assert n_masked == 4 * (L - 1) - 5 - 2 - 1 - 1  # padding, BOS and EOS are never masked
    got = pseudo_log_likelihood(
        model, rows["tokens"], rows["segment_ids"], rows["positions"], chunk=16, **IDS
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.slow
def test_chunk_size_does_not_change_pll(model):
    rows = _rows()
    args = (model, rows["tokens"], rows["segment_ids"], rows["positions"])
    ref = pseudo_log_likelihood(*args, chunk=128, **IDS)
    for chunk in (1, 7, 40):
        np.testing.assert_allclose(pseudo_log_likelihood(*args, chunk=chunk, **IDS), ref, rtol=1e-5)


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_padding_contributes_nothing(model, kind):
    rows = _rows()
    # Five padding columns on every row (four of them still run: lengths are cut to a
    # multiple of 16), then two all-padding rows.
    padded = {k: np.pad(v, ((0, 2), (0, 5))) for k, v in rows.items()}
    ref = score_sequences(model, kind, rows["tokens"], rows["segment_ids"], rows["positions"], **IDS)
    got = score_sequences(model, kind, padded["tokens"], padded["segment_ids"], padded["positions"], **IDS)
    np.testing.assert_allclose(got[:4], ref, rtol=1e-5)
    np.testing.assert_array_equal(got[4:], 0.0)


def test_score_sequences_dispatches_by_mask_kind(model):
    r = _rows()
    args = (r["tokens"], r["segment_ids"], r["positions"])
    causal = causal_log_likelihood(model, *args)
    np.testing.assert_array_equal(score_sequences(model, "causal", *args), causal)
    np.testing.assert_array_equal(score_sequences(model, "prefix", *args), causal)
    np.testing.assert_array_equal(
        score_sequences(model, "bidirectional", *args, **IDS), pseudo_log_likelihood(model, *args, **IDS)
    )
    with pytest.raises(ValueError, match="mask kind"):
        score_sequences(model, "sideways", *args)
    with pytest.raises(ValueError, match="bidirectional"):
        pseudo_log_likelihood(model, *args, mask_kind="causal", **IDS)


def test_scores_use_eval_mode_and_leave_the_model_as_it_was():
    model = _model(**{"model.norm": "batchnorm"})
    model.train()  # batch statistics would couple the rows of a batch
    rows = _rows()
    a = causal_log_likelihood(model, rows["tokens"], rows["segment_ids"], rows["positions"])
    b = causal_log_likelihood(model, rows["tokens"][:1], rows["segment_ids"][:1], rows["positions"][:1])
    np.testing.assert_allclose(a[:1], b, rtol=1e-5)
    assert not model.blocks[0].attn_norm.use_running_average


def test_minimal_pair_accuracy_counts_ties_half_and_is_antisymmetric(model):
    rows = _rows()
    other = {k: v.copy() for k, v in rows.items()}
    other["tokens"][:2, 3] = NUM_SPECIAL + (other["tokens"][:2, 3] - NUM_SPECIAL + 1) % (V - NUM_SPECIAL)
    for kind in ("causal", "bidirectional"):
        assert minimal_pair_accuracy(model, kind, rows, rows, **IDS) == 0.5
        forward = minimal_pair_accuracy(model, kind, rows, other, **IDS)
        assert forward + minimal_pair_accuracy(model, kind, other, rows, **IDS) == 1.0
        assert forward in (0.25, 0.5, 0.75)  # two real pairs, two ties


# --- HMM minimal pairs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hmm() -> HMM:
    return HMM(HMMSpec())


def _joint(hmm: HMM, x_NT: np.ndarray) -> np.ndarray:
    """p(x) by the plain (unscaled) forward algorithm: independent of `forward_backward`."""
    a_NS = hmm.pi[None] * hmm.B[:, x_NT[:, 0]].T
    for t in range(1, x_NT.shape[1]):
        a_NS = (a_NS @ hmm.A) * hmm.B[:, x_NT[:, t]].T
    return a_NS.sum(1)


def test_hmm_pairs_differ_in_one_real_non_first_position(hmm):
    good, bad, _ = hmm_minimal_pairs(hmm, num_pairs=300, seq_len=32, seed=0)
    assert good["tokens"].shape == bad["tokens"].shape == (300, 32)
    assert all(v.dtype == np.int32 for v in (*good.values(), *bad.values()))
    np.testing.assert_array_equal(good["segment_ids"], bad["segment_ids"])
    np.testing.assert_array_equal(good["positions"], bad["positions"])
    diff = good["tokens"] != bad["tokens"]
    np.testing.assert_array_equal(diff.sum(1), 1)
    at = diff.argmax(1)
    assert np.all(at > 0) and np.all(good["segment_ids"][np.arange(300), at] != 0)
    assert np.all(bad["tokens"][:, 0] == BOS_ID) and np.all(bad["tokens"][:, 1:] >= NUM_SPECIAL)
    assert len(np.unique(at)) > 20  # positions spread over the row


def test_hmm_substitute_is_the_least_probable_symbol(hmm):
    N, T = 60, 15
    good, bad, oracle = hmm_minimal_pairs(hmm, num_pairs=N, seq_len=T + 1, seed=1)
    x_good, x_bad = good["tokens"][:, 1:] - NUM_SPECIAL, bad["tokens"][:, 1:] - NUM_SPECIAL
    t_N = (x_good != x_bad).argmax(1)
    # p(x_t = v | x_-t) is proportional to the joint with v put at t: every v, by brute force.
    cand_NVT = np.repeat(x_good[:, None], hmm.spec.num_symbols, 1)
    cand_NVT[np.arange(N), :, t_N] = np.arange(hmm.spec.num_symbols)
    joint_NV = _joint(hmm, cand_NVT.reshape(-1, T)).reshape(N, -1)
    original_N, bad_N = x_good[np.arange(N), t_N], x_bad[np.arange(N), t_N]
    p_good, p_bad = joint_NV[np.arange(N), original_N], joint_NV[np.arange(N), bad_N]
    assert np.all(p_bad < p_good)
    joint_NV[np.arange(N), original_N] = np.inf
    np.testing.assert_allclose(p_bad, joint_NV.min(1), atol=1e-300)
    assert oracle >= 0.95
    assert hmm_unigram_accuracy(hmm, good, bad) < oracle


def test_hmm_pairs_default_oracle_and_tie_breaks(hmm):
    good, bad, oracle = hmm_minimal_pairs(hmm, num_pairs=500, seq_len=64, seed=0)
    assert oracle >= 0.95
    bad_symbols = bad["tokens"][good["tokens"] != bad["tokens"]]
    assert len(np.unique(bad_symbols)) > 30  # random tie-break: the substitutes spread out
    g2, b2, oracle2 = hmm_minimal_pairs(hmm, num_pairs=500, seq_len=64, seed=0, tie_break="lowest")
    np.testing.assert_array_equal(g2["tokens"], good["tokens"])  # same sequences and positions
    assert oracle2 >= 0.95
    assert np.all(b2["tokens"][g2["tokens"] != b2["tokens"]] <= bad_symbols)


def test_hmm_pairs_are_a_function_of_the_seed(hmm):
    a = hmm_minimal_pairs(hmm, num_pairs=50, seq_len=20, seed=3)
    b = hmm_minimal_pairs(hmm, num_pairs=50, seq_len=20, seed=3)
    c = hmm_minimal_pairs(hmm, num_pairs=50, seq_len=20, seed=4)
    for i in (0, 1):
        for k in a[i]:
            np.testing.assert_array_equal(a[i][k], b[i][k])
    assert a[2] == b[2]
    assert not np.array_equal(a[0]["tokens"], c[0]["tokens"])


# --- BLiMP ---------------------------------------------------------------------------------------


class _CharTokenizer:
    """Stands in for a SentencePiece tokenizer: one id per character."""

    def encode(self, texts):
        return [[NUM_SPECIAL + ord(ch) % 50 for ch in text] for text in texts]


def test_blimp_not_prepared_names_the_fix(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(ConfigError) as e:
        blimp_minimal_pairs(
            _CharTokenizer(), data_dir=str(tmp_path), seq_len=16, phenomena=["adjunct_island"]
        )
    assert f"tfds build blimp --data_dir={tmp_path} --file_format=array_record" in str(e.value)
    assert "adjunct_island" in str(e.value)
    with pytest.raises(ConfigError, match="no paradigm"):
        blimp_minimal_pairs(_CharTokenizer(), data_dir=str(tmp_path), seq_len=16, phenomena=["nope"])
    assert not list(temp.iterdir())  # TFDS's empty folders for unprepared datasets were removed


def test_blimp_rows_from_mock_data(tmp_path):
    names = ["adjunct_island", "wh_island"]
    seq_len = 12
    with tfds_mock.mock_data(tmp_path, num_examples=5) as tfds:
        pairs = blimp_minimal_pairs(
            _CharTokenizer(), data_dir=str(tmp_path), seq_len=seq_len, max_pairs=3, phenomena=names
        )
        source = tfds.data_source("blimp/wh_island", split="train", data_dir=str(tmp_path))
        texts = [source[i]["sentence_bad"] for i in range(3)]
    assert list(pairs) == names
    good, bad = pairs["wh_island"]
    for rows in (good, bad):
        assert set(rows) == {"tokens", "segment_ids", "positions"}
        assert all(v.shape == (3, seq_len) and v.dtype == np.int32 for v in rows.values())
        assert np.all(rows["tokens"][:, 0] == BOS_ID)
        real = rows["segment_ids"] == 1
        np.testing.assert_array_equal(real, rows["tokens"] != 0)  # padding is id 0 / segment 0
        np.testing.assert_array_equal(rows["positions"], np.where(real, np.arange(seq_len), 0))
    for row, text in zip(bad["tokens"], texts, strict=True):
        expected = ([BOS_ID, *_CharTokenizer().encode([text])[0]] + [0] * seq_len)[:seq_len]
        np.testing.assert_array_equal(row, expected)
