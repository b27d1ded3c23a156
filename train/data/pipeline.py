"""Real text end to end: documents -> shared tokenizer -> packed rows (cached) -> grain batches.

Pre-tokenized, packed rows are cached under `data_cache_dir` (train/data/token_cache.py: built
streaming, in parallel, resumably), keyed by the corpus, the tokenizer and the row length, so
training never waits on the tokenizer and GPT and BERT runs on one corpus read the same rows.
The train stream is a grain `MapDataset`: shuffled by the run's
seed, reshuffled every epoch, each process reading its own contiguous block of every global
batch. Its iterator state (one integer: global batches taken) goes into each checkpoint, so a
restarted run sees exactly the batches an uninterrupted one would have, on any process count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grain
import numpy as np

from models.errors import ConfigError
from train.data import cache_encode, corpus, packing, token_cache
from train.data.corpus import Shard
from train.tokenizer.files import AnyTokenizer, configured_path, corpus_tokenizer

log = logging.getLogger(__name__)


class _Rows:
    """Random access to packed rows (memory-mapped, stored narrow) for grain, as int32."""

    def __init__(self, tokens: np.ndarray, segment_ids: np.ndarray):
        self.tokens, self.segment_ids = tokens, segment_ids

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {
            "tokens": np.asarray(self.tokens[i], np.int32),
            "segment_ids": np.asarray(self.segment_ids[i], np.int32),
        }


class _ProcessBlock(grain.MapDataset):
    """This process's block of every global batch: its local row n is global row
    (n // per) * batch_size + process_index * per + n % per, per = batch_size // process_count.
    Blocks rather than strides, so that the global batch (the processes' blocks in process
    order) is the same rows in the same order for every process count, and a checkpoint's data
    position carries over when a run resumes on more or fewer hosts."""

    def __init__(self, parent: grain.MapDataset, batch_size: int, process_index: int, process_count: int):
        super().__init__(parent)
        self._batch, self._per = batch_size, batch_size // process_count
        self._offset = process_index * self._per

    def __len__(self) -> int:
        return len(self._parent) // self._batch * self._per

    def __getitem__(self, n):
        if isinstance(n, slice):
            return self.slice(n)
        batch, row = divmod(n, self._per)
        return self._parent[batch * self._batch + self._offset + row]


def _with_positions(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**batch, "positions": packing.positions_from_segments(batch["segment_ids"])}


class GrainTrainIterator(Iterator[dict[str, np.ndarray]]):
    """`per_host`: the process count of a per-host build (each host reads its own part of the
    rows), kept in the position: it cannot carry over to another count."""

    def __init__(self, dataset: grain.MapDataset, per_host: int | None = None):
        self._dataset, self._per_host = dataset, per_host
        self._it = iter(dataset)

    def __next__(self) -> dict[str, np.ndarray]:
        return _with_positions(next(self._it))

    def get_state(self) -> dict[str, Any]:
        state = self._it.get_state()
        return state if self._per_host is None else {**state, "per_host_processes": self._per_host}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("per_host_processes")
        if saved != self._per_host:

            def how(n):
                return f"each of {n} hosts reading its own part" if n else "one row stream for all processes"

            raise ConfigError(
                f"the checkpoint's data position was saved with {how(saved)} (data_cache_per_host); "
                f"this run has {how(self._per_host)}, so the position cannot carry over: resume "
                f"with the same processes and data_cache_per_host, or use a new --workdir"
            )
        self._it.set_state({k: v for k, v in state.items() if k != "per_host_processes"})


class TextSource:
    """A corpus of documents (local files or TFDS) as packed, tokenized rows."""

    def __init__(
        self,
        config: Any,
        workdir: str,
        corpus_key: str,
        shards: list[Shard],
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.seq_len, self.batch_size, self.seed = config.seq_len, config.batch_size, config.seed
        self.eval_max_rows = config.eval_max_rows
        cache = os.path.expanduser(config.data_cache_dir or os.path.join("~", ".cache", "gptbert"))
        t, workers = config.tokenizer, cache_encode.default_workers(config.get("data_workers", 0), shards)
        eval_fraction = config.text.eval_fraction

        def sample() -> Iterator[str]:  # read only if the tokenizer must actually be trained
            chars = [np.zeros(0, np.int64) if s.role == "eval" else corpus.document_chars(s) for s in shards]
            return corpus.tokenizer_sample(shards, chars, eval_fraction, t.max_train_chars)

        self.tokenizer: AnyTokenizer = corpus_tokenizer(
            workdir,
            cache,
            corpus_key,
            _Lazy(sample),
            vocab_size=t.vocab_size,
            model_type=t.model_type,
            max_chars=t.max_train_chars,
            path=configured_path(config),
        )
        self.vocab_size, self.specials = self.tokenizer.vocab_size, self.tokenizer.specials
        tok_hash = self.tokenizer.fingerprint
        # The cache key names its layout (`v3`: with checksums): a change of layout must never read
        # an old cache.
        part = ""
        self._per_host = None
        if config.get("data_cache_per_host", False) and process_count > 1:  # hosts that share no filesystem
            self._per_host = process_count
            part = f"|part {process_index} of {process_count}"
            chars = [corpus.document_chars(s) for s in shards]
            shards = corpus.host_part(shards, chars, eval_fraction, process_index, process_count)
        key = hashlib.sha256(f"{corpus_key}|{tok_hash}|{self.seq_len}|v3{part}".encode()).hexdigest()[:16]
        path = os.path.join(cache, "packed", key)
        packed = token_cache.build(
            path, shards, self.tokenizer, self.seq_len, eval_fraction=eval_fraction, workers=workers
        )
        self.documents = token_cache.meta(path)["documents"]
        self._train, self._eval = packed["train"], packed["eval"]
        if len(self._train[0]) < self.batch_size:
            raise ConfigError(
                f"the corpus packs into {len(self._train[0])} rows of seq_len={self.seq_len}, fewer "
                f"than batch_size={self.batch_size}; lower batch_size or seq_len, or add text"
            )

    @property
    def rows(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The packed rows of each split: (tokens `[R, L]`, segment ids `[R, L]`), memory-mapped."""
        return {"train": self._train, "eval": self._eval}

    def bytes_per_token(self) -> np.ndarray | None:
        """UTF-8 bytes per token id, or None where the tokenizer cannot tell (no bits per byte)."""
        return self.tokenizer.bytes_per_token()

    def train_iterator(self, process_index: int = 0, process_count: int = 1) -> GrainTrainIterator:
        ds = grain.MapDataset.source(_Rows(*self._train)).seed(self.seed).shuffle().repeat(None)
        if self._per_host is None:
            ds = _ProcessBlock(ds, self.batch_size, process_index, process_count)
        ds = ds.batch(self.batch_size // process_count, drop_remainder=True)
        return GrainTrainIterator(ds, self._per_host)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        """The first `eval_max_rows` eval rows, padded to whole global batches."""
        tokens, segments = (np.asarray(a[: self.eval_max_rows], np.int32) for a in self._eval)
        pad = -len(tokens) % self.batch_size
        tokens, segments = (np.pad(a, ((0, pad), (0, 0))) for a in (tokens, segments))
        B = self.batch_size
        return [
            _with_positions({"tokens": tokens[i : i + B], "segment_ids": segments[i : i + B]})
            for i in range(0, len(tokens), B)
        ]


class _Lazy:
    """An iterable that reads the documents only if the tokenizer must actually be trained."""

    def __init__(self, read: Callable[[], Iterable[str]]):
        self._read = read

    def __iter__(self):
        return iter(self._read())


def text_source(config: Any, workdir: str, process_index: int = 0, process_count: int = 1) -> TextSource:
    from train.data import text

    pattern = config.dataset.partition(":")[2]
    text.check_split_by(config.text.split_by)
    paths = text.list_files(pattern)
    stats = [(p, os.path.getsize(p), os.path.getmtime(p)) for p in paths]
    corpus_key = json.dumps(["text", stats, config.text.split_by, config.text.eval_fraction])
    shards = corpus.text_shards(paths, config.text.split_by)
    return TextSource(config, workdir, corpus_key, shards, process_index, process_count)


def tfds_source(config: Any, workdir: str, process_index: int = 0, process_count: int = 1) -> TextSource:
    """The real-text source over a prepared TFDS dataset's train and eval splits."""
    from train.data import tfds

    name = config.dataset.partition(":")[2]
    c = config.tfds
    corpus_key = json.dumps(["tfds", name, c.data_dir, c.train_split, c.eval_split, c.text_feature])
    shards = []
    for role, split in (("train", c.train_split), ("eval", c.eval_split)):
        records = tfds.num_records(name, split, c)
        shards += corpus.tfds_shards(role, name, split, c.data_dir, c.text_feature, records)
    source = TextSource(config, workdir, corpus_key, shards, process_index, process_count)
    for role, split in (("train", c.train_split), ("eval", c.eval_split)):
        if source.documents[role] == 0:
            raise ConfigError(tfds.no_text_message(name, split, c.text_feature))
    return source
