"""The shared SentencePiece tokenizer: exact round trip, special ids, byte counts, sharing."""

import os

import numpy as np
import pytest
from conftest import write_corpus

from configs import bert, gpt
from models.errors import ConfigError
from train.data import text
from train.data.pipeline import text_source
from train.tokenizer.sentencepiece import train_tokenizer
from train.tokenizer.vocab import SPECIAL_TOKENS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pattern = write_corpus(tmp_path_factory.mktemp("corpus"), n_files=30)
    return pattern, text.read_documents(text.list_files(pattern), "file")


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus[1], vocab_size=512, model_type="unigram", max_chars=10**7)


def test_special_tokens_have_the_shared_ids(tokenizer):
    assert [tokenizer._sp.id_to_piece(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    assert tokenizer.vocab_size == 512


@pytest.mark.parametrize(
    "s",
    [
        "Hello  world,\n  twice spaced.",
        "digits 12345 and ünïcödé ☃ 漢字",
        "tabs\tand\r\nCRLF",
        " leading space",
    ],
)
def test_round_trip_is_exact(tokenizer, s):
    assert tokenizer.decode(tokenizer.encode([s])[0]) == s


def test_token_bytes_add_up_to_the_text_bytes(tokenizer, corpus):
    table = tokenizer.bytes_per_token()
    docs = corpus[1][:5] + ["ünïcödé ☃ 漢字 with byte fallback"]
    for doc, ids in zip(docs, tokenizer.encode(docs), strict=True):
        assert int(table[ids].sum()) == len(doc.encode("utf-8"))


def test_vocab_size_the_corpus_cannot_support_names_the_field(corpus):
    with pytest.raises(ConfigError, match=r"tokenizer.vocab_size=50000 is more than this corpus supports"):
        train_tokenizer(corpus[1][:3], vocab_size=50000, model_type="unigram", max_chars=10**7)


def test_vocab_size_too_small_for_byte_fallback_names_the_field(corpus):
    with pytest.raises(ConfigError, match=r"tokenizer.vocab_size=100 is too small"):
        train_tokenizer(corpus[1], vocab_size=100, model_type="unigram", max_chars=10**7)


def _text_config(module, pattern, cache):
    c = module.get_config("tiny")
    c.dataset = f"text:{pattern}"
    c.tokenizer.vocab_size = 512
    c.data_cache_dir = str(cache)
    return c


def test_gpt_and_bert_on_one_corpus_share_the_tokenizer_and_rows(corpus, tmp_path):
    g = text_source(_text_config(gpt, corpus[0], tmp_path / "cache"), str(tmp_path / "gpt"))
    b = text_source(_text_config(bert, corpus[0], tmp_path / "cache"), str(tmp_path / "bert"))
    assert g.tokenizer.model_proto == b.tokenizer.model_proto
    with open(tmp_path / "gpt" / "tokenizer.model", "rb") as f:
        assert f.read() == g.tokenizer.model_proto
    np.testing.assert_array_equal(next(g.train_iterator())["tokens"], next(b.train_iterator())["tokens"])


def test_a_resumed_run_keeps_its_tokenizer_even_if_the_cache_goes(corpus, tmp_path):
    config = _text_config(gpt, corpus[0], tmp_path / "cache")
    first = text_source(config, str(tmp_path / "run"))
    for root, _, files in os.walk(tmp_path / "cache" / "tokenizers"):
        for f in files:
            os.remove(os.path.join(root, f))
    config.tokenizer.vocab_size = 600  # would train a different one, were the workdir's not reused
    assert text_source(config, str(tmp_path / "run")).tokenizer.model_proto == first.tokenizer.model_proto


def test_training_is_deterministic(corpus, tokenizer):
    """Hosts that train their own copy (no shared cache) must end with the same tokenizer."""
    again = train_tokenizer(corpus[1], vocab_size=512, model_type="unigram", max_chars=10**7)
    assert again.model_proto == tokenizer.model_proto
