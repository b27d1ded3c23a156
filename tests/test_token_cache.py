"""The streamed token cache (train/data/token_cache.py) equals packing the whole corpus in memory,
resumes a killed build from its finished shards, is built once by two processes at a time, and
stores tokens narrow."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tfds_mock
from conftest import REPO, assert_rows_equal, cache_config, subprocess_env, write_corpus

import configs.bert as bert
import configs.gpt as gpt
from models.errors import ConfigError
from train.data import corpus, npy_rows, packing, text, token_cache
from train.data.pipeline import text_source, tfds_source


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=60, paragraphs=6)


@pytest.mark.parametrize("split_by", ["file", "blank_lines"])
def test_the_streamed_cache_equals_packing_the_whole_corpus_in_memory(files, split_by, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "SHARD_BYTES", 8 * 1024)  # many shards, rows cut across them
    c = cache_config(gpt, f"text:{files}", tmp_path / "cache", data_workers=2)
    c.text.split_by = split_by
    source = text_source(c, str(tmp_path / "w"))
    paths = text.list_files(files)
    assert len(corpus.text_shards(paths, split_by)) > 5
    train, held = text.split_documents(text.read_documents(paths, split_by), c.text.eval_fraction)
    assert_rows_equal(source._train, packing.pack(source.tokenizer.encode(train), c.seq_len))
    assert_rows_equal(source._eval, packing.pack(source.tokenizer.encode(held), c.seq_len))
    assert source._train[0].dtype == np.uint16 and source._train[1].dtype == np.uint8


def test_per_host_parts_hold_their_train_documents_and_every_eval_row(files, tmp_path, monkeypatch):
    """Hosts without a shared filesystem (`data_cache_per_host`): host p of 2 builds the train
    rows of shards p, p+2, ... and all eval rows; a position saved that way does not resume as
    one row stream, nor the other way round."""
    monkeypatch.setattr(corpus, "SHARD_BYTES", 8 * 1024)
    c = cache_config(gpt, f"text:{files}", tmp_path / "cache", data_workers=2)
    c.text.split_by = "blank_lines"
    whole = text_source(c, str(tmp_path / "w"))
    c.tokenizer.path, c.data_cache_per_host = str(tmp_path / "w" / "tokenizer.model"), True
    parts = [text_source(c, str(tmp_path / f"w{p}"), p, 2) for p in range(2)]
    shards = corpus.text_shards(text.list_files(files), "blank_lines")
    docs = [(i, d) for i, s in enumerate(shards) for d in corpus.read_documents(s)[0]]
    held = text.HeldOut(len(docs), c.text.eval_fraction).take(len(docs))
    for p, part in enumerate(parts):
        mine = [d for (i, d), h in zip(docs, held, strict=True) if i % 2 == p and not h]
        assert_rows_equal(part._train, packing.pack(whole.tokenizer.encode(mine), c.seq_len))
        assert_rows_equal(part._eval, tuple(np.asarray(a, np.int32) for a in whole._eval))
    assert sum(p.documents["train"] for p in parts) == whole.documents["train"]

    per_host = parts[0].train_iterator(0, 2)
    next(per_host)
    with pytest.raises(ConfigError, match="data_cache_per_host"):
        whole.train_iterator().set_state(per_host.get_state())
    with pytest.raises(ConfigError, match="each of 2 hosts reading its own part"):
        parts[0].train_iterator(0, 2).set_state(whole.train_iterator().get_state())


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_the_streamed_cache_equals_packing_tfds_mock_data(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "TFDS_SHARD_RECORDS", 37)
    c = cache_config(bert, "tfds:lm1b", tmp_path / "cache")
    with tfds_mock.mock_data(tmp_path, num_examples=200) as tfds:
        source = tfds_source(c, str(tmp_path / "w"))
        splits = {s: tfds.data_source("lm1b", split=s) for s in ("train", "validation")}
        docs = {s: [_str(d["text"]) for d in splits[s] if _str(d["text"]).strip()] for s in splits}
    assert_rows_equal(source._train, packing.pack(source.tokenizer.encode(docs["train"]), c.seq_len))
    assert_rows_equal(source._eval, packing.pack(source.tokenizer.encode(docs["validation"]), c.seq_len))


@pytest.mark.parametrize("total", [2, 3, 17, 1000])
@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.5, 1.0])
def test_held_out_documents_drawn_in_parts_equal_drawing_them_at_once(total, fraction, monkeypatch):
    monkeypatch.setattr(text.HeldOut, "_CHUNK", 7)
    held = np.random.default_rng(0).random(total) < fraction
    if not held.any():
        held[-1] = True
    if held.all():
        held[0] = False
    rule, parts = text.HeldOut(total, fraction), []
    for n in np.diff([0, *sorted(np.random.default_rng(total).integers(0, total, 3)), total]):
        parts.append(rule.take(int(n)))
    np.testing.assert_array_equal(np.concatenate(parts), held)


def test_narrow_storage_round_trips(tmp_path):
    assert npy_rows.token_dtype(2**16) == np.uint16 and npy_rows.token_dtype(2**16 + 1) == np.uint32
    assert npy_rows.segment_dtype(255) == np.uint8 and npy_rows.segment_dtype(256) == np.uint16
    for dtype, rows in (
        (np.uint16, [[0, 65535, 7]]),
        (np.uint32, [[70000, 1, 2], [3, 4, 5]]),
        (np.uint8, []),
    ):
        path = str(tmp_path / f"{np.dtype(dtype).name}.npy")
        w = npy_rows.NpyRows(path, np.dtype(dtype), 3)
        for row in rows:
            w.append(np.asarray([row], dtype))
        w.close()
        back = np.load(path, mmap_mode="r")
        assert back.dtype == dtype and back.shape == (len(rows), 3)
        np.testing.assert_array_equal(back, np.asarray(rows, dtype).reshape(len(rows), 3))


def test_the_tokenizer_sample_spans_the_corpus_and_skips_held_out_documents(files, tmp_path):
    shards = corpus.text_shards(text.list_files(files), "blank_lines", shard_bytes=8 * 1024)
    chars = [corpus.document_chars(s) for s in shards]
    docs = [d for s in shards for d in corpus.read_documents(s)[0]]
    train, held = text.split_documents(docs, 0.2)
    everything = list(corpus.tokenizer_sample(shards, chars, 0.2, max_chars=10**9))
    assert everything == train  # small corpus: every train document, in order, as before
    budget = sum(map(len, train)) // 10
    sample = list(corpus.tokenizer_sample(shards, chars, 0.2, max_chars=budget))
    assert not set(sample) & set(held)
    last_shard = set(corpus.read_documents(shards[-1])[0])
    assert set(sample) & last_shard, "the sample must reach the end of the corpus"
    assert sum(map(len, sample)) <= budget + len(shards) * max(map(len, train))


_BUILD = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, format="%(message)s")
import configs.gpt as gpt
from train.data import corpus
from train.data.pipeline import text_source
corpus.SHARD_BYTES = 4 * 1024
c = gpt.get_config("tiny")
c.dataset, c.data_cache_dir, c.data_workers = "text:" + sys.argv[1], sys.argv[2], int(sys.argv[5])
c.tokenizer.path = sys.argv[3]
c.seq_len, c.batch_size = 64, 8
text_source(c, sys.argv[4])
"""


def _builder(files: str, cache: str, tokenizer: str, workdir: str, workers: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _BUILD, files, cache, tokenizer, workdir, str(workers)],
        cwd=REPO,
        env=subprocess_env(),
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A corpus of some 60 shards and its tokenizer, and a cache built from it in one go."""
    root = tmp_path_factory.mktemp("big")
    files = write_corpus(root / "corpus", n_files=120, paragraphs=12)
    first = text_source(cache_config(gpt, f"text:{files}", root / "cache", data_workers=1), str(root / "w"))
    tokenizer = str(root / "w" / "tokenizer.model")
    return files, tokenizer, first


def _encoded(stderr: str) -> list[int]:
    return [int(i) for i in re.findall(r"encoded shard (\d+)", stderr)]


@pytest.mark.slow
def test_a_killed_build_resumes_from_its_finished_shards_and_re_encodes_a_damaged_one(big, tmp_path):
    files, tokenizer, reference = big
    cache = str(tmp_path / "cache")
    proc = _builder(files, cache, tokenizer, str(tmp_path / "w1"))
    shards_dir = _shards_when(cache, 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert shards_dir is not None, "the build ended before it could be killed"
    kept = {f for f in os.listdir(shards_dir) if f.endswith(".npz")}
    cut = sorted(kept)[0]  # and one finished shard cut short, as by a disk fault
    os.truncate(os.path.join(shards_dir, cut), os.path.getsize(os.path.join(shards_dir, cut)) // 2)
    resumed = _builder(files, cache, tokenizer, str(tmp_path / "w2"))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert f"encoded shard {os.path.join(shards_dir, cut)} is damaged (BadZipFile" in err
    redone = {f"{i:05d}.npz" for i in _encoded(err)}
    assert cut in redone and not redone & (kept - {cut}), "finished shards were encoded again"
    (path,) = [os.path.join(cache, "packed", d) for d in os.listdir(os.path.join(cache, "packed"))]
    packed = token_cache.load(path)
    for split, ref in (("train", reference._train), ("eval", reference._eval)):
        assert_rows_equal(packed[split], tuple(np.asarray(a, np.int32) for a in ref))


@pytest.mark.slow
def test_two_processes_building_one_cache_encode_each_shard_once(big, tmp_path):
    files, tokenizer, reference = big
    cache = str(tmp_path / "cache")
    procs = [_builder(files, cache, tokenizer, str(tmp_path / f"w{i}")) for i in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    a, b = (_encoded(e) for e in errs)
    n_shards = len(corpus.text_shards(text.list_files(files), "file", shard_bytes=4 * 1024))
    assert not set(a) & set(b) and sorted(a + b) == list(range(n_shards))
    assert sum("token cache " in e for e in errs) == 1  # packed and published once
    (path,) = os.listdir(os.path.join(cache, "packed"))
    packed = token_cache.load(os.path.join(cache, "packed", path))
    assert_rows_equal(packed["train"], tuple(np.asarray(a, np.int32) for a in reference._train))


def _shards_when(cache: str, enough: int, proc: subprocess.Popen) -> str | None:
    """The build's shard folder once it holds `enough` shards (None if the build ended first)."""
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        # The build folder vanishes when the build publishes: glob, never list a folder by name.
        found = glob.glob(os.path.join(cache, "packed", "*.build", "shards", "*.npz"))
        if len(found) >= enough:
            return os.path.dirname(found[0])
        time.sleep(0.005)
    return None


@pytest.mark.slow
def test_encode_workers_end_with_their_launcher(big, tmp_path):
    """SIGKILL of the process that started the workers: they end too, before the build they were
    part of could finish; the same command then finishes it."""
    import psutil

    _, tokenizer, _ = big
    files = write_corpus(tmp_path / "corpus", n_files=600, paragraphs=12)  # seconds of encoding
    cache = str(tmp_path / "cache")
    proc = _builder(files, cache, tokenizer, str(tmp_path / "w1"), workers=2)
    shards = _shards_when(cache, 3, proc)
    workers = psutil.Process(proc.pid).children()
    proc.kill()
    proc.wait()
    assert shards is not None and len(workers) == 2, "the build ended before it could be killed"
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"workers still running after their launcher died: {alive}"
    # Orphaned workers would have encoded every shard; these stopped with their launcher.
    total = len(corpus.text_shards(text.list_files(files), "file", shard_bytes=4 * 1024))
    assert len([f for f in os.listdir(shards) if f.endswith(".npz")]) < total
    resumed = _builder(files, cache, tokenizer, str(tmp_path / "w2"), workers=2)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
