"""The token cache against faults after it was built or in its input: a damaged cache (flipped
bits, ids outside the vocabulary, a truncated file) is named, set aside and rebuilt; binary files
the glob matches are skipped and named, and every file with invalid UTF-8 is named."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import assert_rows_equal, cache_config, write_corpus

import configs.gpt as gpt
from train.data.pipeline import text_source


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=60, paragraphs=6)


def _cache_folder(cache) -> str:
    (path,) = [p for p in (cache / "packed").iterdir() if p.is_dir() and "." not in p.name]
    return str(path)


@pytest.mark.parametrize("damage", ["flip", "out_of_vocabulary", "truncate"])
def test_a_damaged_cache_is_named_set_aside_and_rebuilt(damage, files, tmp_path, caplog):
    """The checksums written with the cache are checked when it is opened: flipped bits, ids
    outside the vocabulary, a truncated file are each named, the damaged cache is kept aside,
    and the rows come back as they were built."""
    c = cache_config(gpt, f"text:{files}", tmp_path / "cache")
    intact = text_source(c, str(tmp_path / "w"))
    expected = {k: tuple(np.array(a) for a in v) for k, v in intact.rows.items()}
    folder = _cache_folder(tmp_path / "cache")
    name = "eval_tokens.npy" if damage == "truncate" else "train_tokens.npy"
    path = os.path.join(folder, name)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if damage == "truncate":
            f.truncate(size - 100)
        else:
            f.seek(size // 2)
            data = f.read(64)
            f.seek(size // 2)
            f.write(b"\xff" * 64 if damage == "out_of_vocabulary" else bytes(b ^ 0x5A for b in data))
    with caplog.at_level("WARNING"):
        rebuilt = text_source(c, str(tmp_path / "w"))
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"token cache damaged: {path} " in message
    why = {
        "flip": "differs from the checksum written with it",
        "out_of_vocabulary": "it holds ids up to 65535, outside the vocabulary of 512",
        "truncate": f"has {size - 100:,} bytes, {size:,} when written",
    }
    assert why[damage] in message
    aside = [p for p in (tmp_path / "cache" / "packed").iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1 and (aside[0] / name).exists()  # kept for a look, not deleted
    for split, rows in rebuilt.rows.items():
        assert_rows_equal(rows, expected[split])
    caplog.clear()
    text_source(c, str(tmp_path / "w"))  # intact now: opened without a word
    assert "damaged" not in " ".join(r.getMessage() for r in caplog.records)


def test_binary_files_are_skipped_and_every_file_with_replaced_bytes_is_named(files, tmp_path, caplog):
    """A library matched by the text glob supplies no rows; each file with invalid UTF-8 is
    named in the warning, also from the encode workers (the names travel in the shards)."""
    import shutil

    folder = tmp_path / "corpus"
    shutil.copytree(os.path.dirname(files), folder)
    library = folder / "zz_lib.txt"  # a binary file the glob matches: NUL bytes, mostly invalid UTF-8
    library.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 800)
    latin1 = folder / "aa_latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e, the same words again. ".encode("latin-1") * 20)
    c = cache_config(gpt, f"text:{folder}/*.txt", tmp_path / "cache", data_workers=2)
    with caplog.at_level("WARNING"):
        source = text_source(c, str(tmp_path / "w"))
    skipped = f"skipped 1 files that are not text (a NUL byte, or over 30% invalid UTF-8): {library}"
    assert skipped in caplog.text
    assert f"replaced 80 invalid UTF-8 sequences with U+FFFD in 1 files: {latin1} (80)" in caplog.text
    clean = text_source(cache_config(gpt, f"text:{files}", tmp_path / "cache2"), str(tmp_path / "w2"))
    assert sum(source.documents.values()) == sum(clean.documents.values()) + 1  # the Latin-1 file only
