"""Real-text input: packing, the grain stream and its resume, TFDS through mock data, bad input."""

import collections
import logging
import tempfile

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_corpus

from configs import bert, gpt
from models.errors import ConfigError
from models.masks import make_attention_mask
from train.data import packing, text
from train.data.pipeline import text_source, tfds_source
from train.tokenizer.vocab import BOS_ID, EOS_ID


def test_packing_keeps_every_token_once_and_splits_long_documents():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(7, 100, n)) for n in [3, 10, 40, 1, 17, 16, 70, 5]]
    tokens, seg = packing.pack(docs, seq_len=16)
    want = collections.Counter(t for d in docs for t in [BOS_ID, *d, EOS_ID])
    assert collections.Counter(tokens[seg > 0].tolist()) == want
    assert (tokens[seg == 0] == 0).all()
    # Reading segments back in order gives back the documents, cut at row length.
    chunks = [tokens[r][seg[r] == s].tolist() for r in range(len(tokens)) for s in range(1, seg[r].max() + 1)]
    assert [t for c in chunks for t in c] == [t for d in docs for t in [BOS_ID, *d, EOS_ID]]
    assert all(len(c) <= 16 for c in chunks)


def test_segments_positions_and_mask_at_document_boundaries():
    long_doc = list(range(30, 39))  # 11 tokens with BOS and EOS: split 8 + 3
    tokens, seg = packing.pack([[10, 11], [20, 21], long_doc], seq_len=8)
    np.testing.assert_array_equal(tokens[0], [BOS_ID, 10, 11, EOS_ID, BOS_ID, 20, 21, EOS_ID])
    np.testing.assert_array_equal(seg[0], [1, 1, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(tokens[1], [BOS_ID, *range(30, 37)])
    np.testing.assert_array_equal(tokens[2], [37, 38, EOS_ID, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(seg[2], [1, 1, 1, 0, 0, 0, 0, 0])
    pos = packing.positions_from_segments(seg)
    np.testing.assert_array_equal(pos[0], [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(pos[2], [0, 1, 2, 0, 0, 0, 0, 0])
    mask = np.asarray(make_attention_mask("causal", jnp.asarray(seg)))[:, 0]
    assert mask[0, 3, :4].all() and not mask[0, 4, :4].any() and mask[0, 7, 4:].all()
    assert not mask[2, :3, 3:].any()  # nothing attends to padding


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=60)


def _config(module, dataset, cache, **kw):
    c = module.get_config("tiny")
    c.dataset = dataset
    c.tokenizer.vocab_size = 512
    c.data_cache_dir = str(cache)
    c.seq_len, c.batch_size = 64, 8
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_one_epoch_yields_every_row_once_and_the_next_epoch_reshuffles(corpus, tmp_path):
    source = text_source(_config(gpt, f"text:{corpus}", tmp_path), str(tmp_path / "w"))
    rows = len(source._train[0])
    it = source.train_iterator()
    epoch = np.concatenate([next(it)["tokens"] for _ in range(rows // 8)])
    second = np.concatenate([next(it)["tokens"] for _ in range(rows // 8)])
    all_rows = np.asarray(source._train[0], np.int32)  # stored narrow (uint16)
    # Nothing more often than it is stored (a corpus may pack two equal rows), nearly all of it.
    stored = collections.Counter(map(bytes, all_rows))
    assert collections.Counter(map(bytes, epoch)) <= stored and len(epoch) >= rows - 7
    assert not np.array_equal(epoch[: len(second)], second)


def test_iterator_resumes_mid_epoch_and_processes_partition_batches(corpus, tmp_path):
    source = text_source(_config(gpt, f"text:{corpus}", tmp_path), str(tmp_path / "w"))
    it = source.train_iterator()
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    again = source.train_iterator()
    again.set_state(state)
    for e in expected:
        got = next(again)
        for k in ("tokens", "segment_ids", "positions"):
            np.testing.assert_array_equal(got[k], e[k])


def test_the_global_batch_and_the_data_position_do_not_depend_on_the_process_count(corpus, tmp_path):
    """Each process reads its contiguous block of every global batch, so 1, 2 or 4 processes see
    the same rows in the same order, and a position saved by one count resumes on another."""
    source = text_source(_config(gpt, f"text:{corpus}", tmp_path), str(tmp_path / "w"))
    one = source.train_iterator()
    reference = [next(one)["tokens"] for _ in range(6)]
    for count in (2, 4):
        its = [source.train_iterator(p, count) for p in range(count)]
        for i in range(3):
            np.testing.assert_array_equal(np.concatenate([next(it)["tokens"] for it in its]), reference[i])
        state = its[0].get_state()  # saved by 2 or 4 processes, resumed by 1
        again = source.train_iterator()
        again.set_state(state)
        for i in range(3, 6):
            np.testing.assert_array_equal(next(again)["tokens"], reference[i])


def test_blank_line_documents_and_held_out_split(corpus):
    docs = text.read_documents(text.list_files(corpus), "blank_lines")
    assert len(docs) == 60 * 4
    train, held = text.split_documents(docs, 0.1)
    assert len(train) + len(held) == len(docs) and 10 <= len(held) <= 40
    assert text.split_documents(docs, 0.1) == (train, held)


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, caplog):
    (tmp_path / "a.txt").write_bytes(b"good text \xff\xfe here")
    (tmp_path / "b.txt").write_bytes(b"more")
    with caplog.at_level(logging.WARNING):
        docs = text.read_documents(sorted(map(str, tmp_path.glob("*.txt"))), "file")
    assert docs[0] == "good text \ufffd\ufffd here"
    assert "replaced 2 invalid UTF-8 sequences" in caplog.text


@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda d: None, "matches no files"),
        (lambda d: (d / "a.txt").write_text("  \n\n \t"), "hold no text"),
        (lambda d: (d / "a.txt").write_text("one document only"), "single document"),
    ],
)
def test_bad_text_corpora_are_named(tmp_path, setup, match):
    folder = tmp_path / "docs"
    folder.mkdir()
    setup(folder)
    with pytest.raises(ConfigError, match=match):
        text_source(_config(gpt, f"text:{folder}/*.txt", tmp_path / "cache"), str(tmp_path / "w"))


tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name", ["lm1b", "tiny_shakespeare"])
def test_tfds_dataset_through_mock_data(name, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # TFDS mock data leaves empty folders there
    with tfds.testing.mock_data(num_examples=400):
        source = tfds_source(_config(bert, f"tfds:{name}", tmp_path), str(tmp_path / "w"))
        batch = next(source.train_iterator())
    assert batch["tokens"].shape == (8, 64)
    assert (batch["tokens"][:, 0] == BOS_ID).all()
    assert source.eval_batches()


def test_tfds_errors_name_the_fix(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(ConfigError, match="TFDS has no dataset of that name"):
        tfds_source(_config(gpt, "tfds:no_such_dataset", tmp_path), str(tmp_path / "w"))
    c = _config(gpt, "tfds:lm1b", tmp_path)
    c.tfds.data_dir = str(tmp_path / "empty_tfds")
    with pytest.raises(ConfigError, match=r"not prepared as array_record.*tfds build lm1b"):
        tfds_source(c, str(tmp_path / "w"))
    with tfds.testing.mock_data(num_examples=8):
        c = _config(gpt, "tfds:lm1b", tmp_path / "other")
        c.tfds.text_feature = "body"
        with pytest.raises(ConfigError, match=r"tfds.text_feature='body'.*\['text'\]"):
            tfds_source(c, str(tmp_path / "w2"))
    assert not list(temp.iterdir())  # TFDS's empty folders for unprepared datasets were removed


class TinyText(tfds.core.GeneratorBasedBuilder):
    """A real TFDS dataset, prepared as array_record in the test (no mocking, no TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 300), "validation": self._generate_examples(1, 20)}

    def _generate_examples(self, seed, n):
        rng = np.random.default_rng(seed)
        words = ["".join(rng.choice(list("abcdefghij"), int(k))) for k in rng.integers(1, 7, 300)]
        for i in range(n):
            yield i, {"text": " ".join(rng.choice(words, 40)) + "."}


def test_prepared_tfds_dataset_is_read_and_its_splits_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # TFDS leaves an empty folder there
    data_dir = str(tmp_path / "tfds")
    TinyText(data_dir=data_dir, file_format="array_record").download_and_prepare()
    c = _config(gpt, "tfds:tiny_text", tmp_path / "cache")
    c.tfds.data_dir = data_dir
    source = tfds_source(c, str(tmp_path / "w"))
    batch = next(source.train_iterator())
    assert batch["tokens"].shape == (8, 64) and (batch["segment_ids"] > 0).any()
    c = _config(gpt, "tfds:tiny_text", tmp_path / "cache2")
    c.tfds.data_dir, c.tfds.eval_split = data_dir, "test"
    with pytest.raises(ConfigError, match=r"has no split 'test'; it has \['train', 'validation'\]"):
        tfds_source(c, str(tmp_path / "w2"))
