"""Fine-tuning with a pooled head, the HMM pair task against brute force, and classification rows."""

import glob
import itertools

import jax
import numpy as np
import pytest
import tfds_mock
from conftest import micro_config, write_corpus
from flax import nnx

from experiments.downstream.classification_data import classification_rows, load_task
from experiments.downstream.finetune import Classifier, finetune, hmm_pair_task
from models.errors import ConfigError
from models.registry import make_model, model_config
from train.data.hmm import HMM, PAIR_STRENGTH, HMMSpec, perturbed
from train.tokenizer.sentencepiece import train_tokenizer
from train.tokenizer.vocab import BOS_ID, NUM_SPECIAL, PAD_ID

MARKER = NUM_SPECIAL  # the token whose presence is the label of the synthetic task


def _micro_model(seed: int = 0):
    c = micro_config("clm")
    return make_model(model_config(c, NUM_SPECIAL + c.hmm.num_symbols), nnx.Rngs(seed)), c


def _marker_task(rng: np.random.Generator, num: int, seq_len: int, num_symbols: int):
    """Rows of random length; label 1 iff MARKER occurs (once, anywhere among the real tokens)."""
    ids, labels = [], rng.integers(0, 2, num)
    for label in labels:
        n = int(rng.integers(4, seq_len))
        row = list(rng.integers(MARKER + 1, NUM_SPECIAL + num_symbols, n))
        if label:
            row[int(rng.integers(0, n))] = MARKER
        ids.append(row)
    return classification_rows(ids, labels, seq_len)


@pytest.mark.slow
@pytest.mark.parametrize("mask_kind", ["causal", "bidirectional"])
def test_finetune_learns_a_separable_task_and_leaves_the_model_alone(mask_kind):
    model, c = _micro_model()
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model)))
    rng = np.random.default_rng(0)
    train = _marker_task(rng, 512, 16, c.hmm.num_symbols)
    eval_ = _marker_task(rng, 256, 16, c.hmm.num_symbols)
    result = finetune(
        model, mask_kind, train, eval_, num_classes=2, steps=150, batch_size=32, learning_rate=3e-3
    )
    assert result["accuracy"] > 0.9, result
    assert result["pooling"] == {"causal": "last", "bidirectional": "mean"}[mask_kind]
    after = nnx.to_pure_dict(nnx.state(model))
    jax.tree.map(np.testing.assert_array_equal, before, after)


@pytest.mark.slow
def test_last_pooling_under_a_causal_mask_reads_every_real_token_and_no_padding():
    model, c = _micro_model()
    clf = Classifier(model, 3, "causal", "last", rngs=nnx.Rngs(1))
    n_real, seq_len = 9, 16
    rows = classification_rows([list(range(MARKER, MARKER + n_real - 1))], [0], seq_len)
    args = lambda r: (r["tokens"], r["segment_ids"], r["positions"])  # noqa: E731
    base = np.asarray(clf(*args(rows)))
    for t in range(seq_len):
        changed = {**rows, "tokens": rows["tokens"].copy()}
        changed["tokens"][0, t] = MARKER + 9  # a token that occurs nowhere in the row
        moved = not np.allclose(np.asarray(clf(*args(changed))), base, atol=1e-7)
        assert moved == (t < n_real), t  # every real token matters, padding never does
    # Padding alone (more of it, other token ids) changes nothing either.
    longer = classification_rows([list(range(MARKER, MARKER + n_real - 1))], [0], seq_len + 8)
    longer["tokens"][0, n_real:] = MARKER + 3
    np.testing.assert_allclose(np.asarray(clf(*args(longer))), base, atol=1e-6)


def test_pair_task_bayes_accuracy_matches_brute_force_on_a_tiny_spec():
    spec = HMMSpec(num_states=3, num_symbols=4, transition_support=2, emission_support=3, concentration=1.0)
    seq_len = 5  # BOS + 4 symbols
    train, eval_, bayes = hmm_pair_task(spec, num_train=20, num_eval=60, seq_len=seq_len, strength=0.5)
    assert train["tokens"].shape == (20, seq_len) and (train["tokens"][:, 0] == BOS_ID).all()
    assert (eval_["segment_ids"] == 1).all() and eval_["labels"].sum() == 30
    hmms = (HMM(spec), perturbed(spec, 0.5))

    def p(hmm: HMM, x) -> float:
        total = 0.0
        for z in itertools.product(range(3), repeat=len(x)):
            q = hmm.pi[z[0]] * hmm.B[z[0], x[0]]
            for t in range(1, len(x)):
                q *= hmm.A[z[t - 1], z[t]] * hmm.B[z[t], x[t]]
            total += q
        return total

    x_NT = eval_["tokens"][:, 1:] - NUM_SPECIAL
    guess = [int(p(hmms[1], x) > p(hmms[0], x)) for x in x_NT]
    assert bayes == pytest.approx(np.mean(np.array(guess) == eval_["labels"]))
    assert 0.5 < bayes < 1.0


def test_default_pair_task_is_hard_but_learnable_in_principle():
    base, other = HMM(HMMSpec()), perturbed(HMMSpec(), PAIR_STRENGTH)
    # Same support: no sequence of one is impossible under the other.
    np.testing.assert_array_equal(base.A > 0, other.A > 0)
    np.testing.assert_array_equal(base.B > 0, other.B > 0)
    _, eval_, bayes = hmm_pair_task(num_train=8, num_eval=1024, seq_len=64)
    assert 0.75 < bayes < 0.95, bayes
    assert eval_["tokens"].max() < NUM_SPECIAL + 128


def test_classification_rows_layout():
    rows = classification_rows([[10, 11, 12], [13] * 9], [1, 0], seq_len=6)
    np.testing.assert_array_equal(rows["tokens"][0], [BOS_ID, 10, 11, 12, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(rows["segment_ids"][0], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows["positions"][0], [0, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(rows["tokens"][1], [BOS_ID] + [13] * 5)  # truncated to the row
    np.testing.assert_array_equal(rows["labels"], [1, 0])


@pytest.mark.parametrize("name", ["sst2", "imdb"])
def test_text_tasks_through_tfds_mock_data(name, tmp_path):
    write_corpus(tmp_path / "corpus", n_files=10)
    docs = [open(f).read() for f in sorted(glob.glob(str(tmp_path / "corpus" / "*")))]
    tokenizer = train_tokenizer(docs, 400, "unigram", 10**6)
    with tfds_mock.mock_data(tmp_path, num_examples=12):
        train, eval_, num_classes = load_task(name, tokenizer, 32)
    assert num_classes == 2
    for rows in (train, eval_):
        assert rows["tokens"].shape == (12, 32) and (rows["tokens"][:, 0] == BOS_ID).all()
        assert set(np.unique(rows["labels"])) <= {0, 1}
        real = rows["segment_ids"] == 1
        assert (rows["tokens"][~real] == PAD_ID).all() and (rows["tokens"][real] != PAD_ID).all()


def test_an_unprepared_text_task_names_the_build_command(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ConfigError, match=r"tfds build glue/sst2 .*--file_format=array_record"):
        load_task("sst2", None, 32, data_dir=str(tmp_path / "empty"))
