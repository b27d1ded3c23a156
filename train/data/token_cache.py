"""The token cache: a corpus encoded and packed into rows once, streamed, in parallel, resumably.

    {cache}/packed/{key}/            the published cache (renamed into place when complete)
        train_tokens.npy  train_segment_ids.npy  eval_tokens.npy  eval_segment_ids.npy  meta.json
        (meta.json holds each file's size and SHA-256, checked every time the cache is opened)
    {cache}/packed/{key}.build/      while building: shards/NNNNN.npz (ids and document lengths)

1. Encode (train/data/cache_encode.py): each shard (train/data/corpus.py) is read and encoded
   by a worker process (train/data/encode_worker.py) and written atomically; a build killed part-way keeps its
   finished shards. Processes building the same
   cache (the hosts of a multi-process run on a shared filesystem, or two launches) claim shards
   through file locks, so each shard is encoded once; a claim dies with its process.
2. Pack: one process (under a lock) streams the encoded shards in order through `StreamPacker`
   into .npy files written row by row, then renames the folder into place.
Memory during the build is bounded by a shard per worker, not by the corpus. Tokens are stored
in the smallest unsigned type that holds the vocabulary, segment ids in one that holds seq_len.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable

import numpy as np

from models.errors import ConfigError
from train.data import cache_integrity, packing, text
from train.data.cache_encode import FileLock, encode_all, shard_paths
from train.data.corpus import Shard
from train.data.npy_rows import NpyRows, segment_dtype, token_dtype, writing
from train.tokenizer.files import AnyTokenizer
from train.tokenizer.vocab import Specials

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")


def _doc_count(path: str) -> int:
    with np.load(path) as z:
        return len(z["lengths"])


def _held_out_draws(shards: list[Shard], files: list[str], eval_fraction: float) -> text.HeldOut | None:
    """The held-out draws over every document of the shards that are split by `eval_fraction`
    (None when no shard is)."""
    n_docs = [s.docs if s.keep is not None else _doc_count(f) for s, f in zip(shards, files, strict=True)]
    split_docs = sum(n for n, s in zip(n_docs, shards, strict=True) if s.role == "split")
    if split_docs == 0 and any(s.role == "split" for s in shards):
        raise ConfigError(text.no_text_message(sum(len(s.spec) - 1 for s in shards)))
    return text.HeldOut(split_docs, eval_fraction) if split_docs else None


def _held_out(shard: Shard, path: str, held_out: text.HeldOut | None, n: int) -> np.ndarray:
    """Which of the shard's `n` documents go to the eval split (advancing the draws past it)."""
    if shard.role == "split" and shard.keep is not None:  # another host's: its held-out docs
        held_there = held_out.take(shard.docs)  # advances the draws past the whole shard
        if not held_there[list(shard.keep)].all():
            raise RuntimeError(f"shard {path}: its kept documents are not the held-out ones")
        return np.ones(n, bool)
    if shard.role == "split":
        return held_out.take(n)
    return np.full(n, shard.role == "eval")


def _pack(
    build: str, shards: list[Shard], seq_len: int, vocab_size: int, specials: Specials, eval_fraction: float
) -> dict:
    out = os.path.join(build, f"out-{os.getpid()}")
    os.makedirs(out, exist_ok=True)
    tdt, sdt = token_dtype(vocab_size), segment_dtype(seq_len)
    writers = {
        (split, what): NpyRows(os.path.join(out, f"{split}_{what}.npy"), dt, seq_len)
        for split in SPLITS
        for what, dt in (("tokens", tdt), ("segment_ids", sdt))
    }

    def emitter(split: str) -> Callable[[np.ndarray, np.ndarray], None]:
        return lambda t, s: (writers[split, "tokens"].append(t), writers[split, "segment_ids"].append(s))

    packers = {
        split: packing.StreamPacker(seq_len, emitter(split), tdt, sdt, specials=specials) for split in SPLITS
    }
    files = shard_paths(build, len(shards))
    held_out = _held_out_draws(shards, files, eval_fraction)
    docs, problems = {"train": 0, "eval": 0}, text.ReadProblems()
    for shard, path in zip(shards, files, strict=True):
        with np.load(path) as z:
            tokens, lengths = z["tokens"], z["lengths"]
            problems.add(text.ReadProblems.from_json(str(z["problems"])))
        held = _held_out(shard, path, held_out, len(lengths))
        per_token = np.repeat(held, lengths)
        for split, mask, tok_mask in (("train", ~held, ~per_token), ("eval", held, per_token)):
            if mask.any():
                packers[split].add(tokens[tok_mask], lengths[mask])
                docs[split] += int(mask.sum())
    for p in packers.values():
        p.finish()
    for w in writers.values():
        w.close()
    problems.warn()
    meta = {
        "documents": docs,
        "rows": {split: writers[split, "tokens"].rows for split in SPLITS},
        "token_dtype": tdt.name,
        "segment_dtype": sdt.name,
        "seq_len": seq_len,
        "vocab_size": vocab_size,
        "shards": len(shards),
        "files": {os.path.basename(w.path): cache_integrity.file_record(w.path) for w in writers.values()},
    }
    with writing(os.path.join(out, "meta.json")), open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return {"out": out, **meta}


def build(
    path: str,
    shards: list[Shard],
    tokenizer: AnyTokenizer,
    seq_len: int,
    *,
    eval_fraction: float = 0.0,
    workers: int = 1,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The packed rows of every split (memory-mapped), built into `path` if it is not there. A
    cache whose files do not match the checksums written with them is moved aside and rebuilt."""
    if os.path.isdir(path):
        cache_integrity.set_aside_if_damaged(path, tokenizer.vocab_size)
    if not os.path.isdir(path):
        build_dir = f"{path}.build"
        os.makedirs(os.path.join(build_dir, "shards"), exist_ok=True)
        encode_all(build_dir, shards, tokenizer, workers, path)
        try:
            lock = FileLock(os.path.join(build_dir, "pack.lock"))
        except FileNotFoundError:  # another process published the cache and removed the build folder
            if os.path.isdir(path):
                return load(path)
            raise
        lock.acquire()
        try:
            if not os.path.isdir(path):
                packed = _pack(
                    build_dir, shards, seq_len, tokenizer.vocab_size, tokenizer.specials, eval_fraction
                )
                try:
                    os.rename(packed["out"], path)
                except OSError:  # published meanwhile by a process the lock did not stop
                    if not os.path.isdir(path):
                        raise
                log.info("token cache %s: %s", path, json.dumps(packed["rows"]))
            shutil.rmtree(build_dir, ignore_errors=True)
        finally:
            lock.release()
    return load(path)


def load(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        split: tuple(
            np.load(os.path.join(path, f"{split}_{what}.npy"), mmap_mode="r")
            for what in ("tokens", "segment_ids")
        )
        for split in SPLITS
    }


def meta(path: str) -> dict:
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)
