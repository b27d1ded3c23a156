"""The token cache: a corpus encoded and packed into rows once, streamed, in parallel, resumably.

    {cache}/packed/{key}/            the published cache (renamed into place when complete)
        train_tokens.npy  train_segment_ids.npy  eval_tokens.npy  eval_segment_ids.npy  meta.json
    {cache}/packed/{key}.build/      while building: shards/NNNNN.npz (ids and document lengths)

1. Encode: each shard (train/data/corpus.py) is read and encoded by a worker process
   (train/data/encode_worker.py) and written atomically; a build killed part-way keeps its
   finished shards. Processes building the same
   cache (the hosts of a multi-process run on a shared filesystem, or two launches) claim shards
   through file locks, so each shard is encoded once; a claim dies with its process.
2. Pack: one process (under a lock) streams the encoded shards in order through `StreamPacker`
   into .npy files written row by row, then renames the folder into place.
Memory during the build is bounded by a shard per worker, not by the corpus. Tokens are stored
in the smallest unsigned type that holds the vocabulary, segment ids in one that holds seq_len.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from models.errors import ConfigError
from train.data import corpus, packing, text
from train.data.corpus import Shard
from train.data.npy_rows import NpyRows, segment_dtype, token_dtype
from train.tokenizer.files import AnyTokenizer
from train.tokenizer.vocab import Specials

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")


class _FileLock:
    """An flock on a file: released by the kernel when its process dies, so a killed builder
    never leaves a claim that others would wait on forever."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)

    def acquire(self, blocking: bool = True) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False

    def release(self) -> None:
        os.close(self._fd)  # closing the only descriptor drops the lock


# -- encode -------------------------------------------------------------------------------------


def _encode_shard(shard: Shard, out: str, dtype: np.dtype, threads: int, tok: AnyTokenizer) -> None:
    docs, bad = corpus.read_documents(shard)
    tokens, lengths = tok.encode_arrays(docs, dtype, num_threads=threads)
    tmp = f"{out}.tmp-{os.getpid()}.npz"
    np.savez(tmp, tokens=tokens, lengths=lengths, bad=np.int64(bad))
    os.replace(tmp, out)


def _shard_paths(build: str, n: int) -> list[str]:
    return [os.path.join(build, "shards", f"{i:05d}.npz") for i in range(n)]


def encode_claimed(build: str, shards: list[Shard], tok: AnyTokenizer, threads: int, published: str) -> None:
    """Encodes here, one by one, each shard that no process has finished or holds; then waits for
    the shards others hold (a claim of a process that died is released, and the shard is encoded
    here). Run by every worker and builder alike: the locks make them share the work."""
    paths, dtype = _shard_paths(build, len(shards)), token_dtype(tok.vocab_size)
    for blocking in (False, True):
        for i, path in enumerate(paths):
            if os.path.exists(path) or os.path.exists(published):
                continue
            claim = _FileLock(path + ".lock")
            try:
                if claim.acquire(blocking) and not os.path.exists(path):
                    _encode_shard(shards[i], path, dtype, threads, tok)
                    log.debug("encoded shard %d", i)
            finally:
                claim.release()


def default_workers(config_workers: int, shards: list[Shard]) -> int:
    """Worker processes for `shards`. TFDS shards are read in this process (a worker would not
    see a dataset registered or mocked here); SentencePiece's own threads still encode them on
    every core."""
    if any(s.kind == "tfds" for s in shards):
        return 1
    return config_workers if config_workers > 0 else (os.cpu_count() or 1)


def _encode_all(build: str, shards: list[Shard], tok: AnyTokenizer, workers: int, published: str) -> None:
    todo = [p for p in _shard_paths(build, len(shards)) if not os.path.exists(p)]
    if workers > 1 and len(todo) > 1:
        _run_workers(build, shards, tok, min(workers, len(todo)), published)
    # Whatever is left (one worker, or shards another process holds) is done or awaited here.
    encode_claimed(build, shards, tok, os.cpu_count() or 1, published)


def _run_workers(build: str, shards: list[Shard], tok: AnyTokenizer, n: int, published: str) -> None:
    """`n` worker processes (`python -m train.data.encode_worker`: a fresh interpreter, which
    never re-runs the caller's script as multiprocessing's spawn would) share the shards."""
    plan = {
        "shards": [dataclasses.asdict(s) for s in shards],
        "published": published,
        "tokenizer": tok.filename,
    }
    tok.save(os.path.join(build, tok.filename))
    tmp = os.path.join(build, f"plan.json.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(plan, f)
    os.replace(tmp, os.path.join(build, "plan.json"))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    logs = [os.path.join(build, f"worker-{os.getpid()}-{k}.log") for k in range(n)]
    files = [open(path, "w") for path in logs]
    cmd = [sys.executable, "-m", "train.data.encode_worker", build]
    procs = [subprocess.Popen(cmd, env=env, stderr=f) for f in files]
    t0, last = time.perf_counter(), 0.0
    try:
        while any(p.poll() is None for p in procs):
            for p, path in zip(procs, logs, strict=True):
                if p.returncode:  # one failed: the others would fail the same way
                    raise RuntimeError(f"encoding the corpus failed:\n{open(path).read()[-3000:]}")
            if time.perf_counter() - last > 10:
                last = time.perf_counter()
                done = sum(os.path.exists(p) for p in _shard_paths(build, len(shards)))
                log.info("encoded %d/%d shards (%d workers, %.0f s)", done, len(shards), n, last - t0)
            time.sleep(0.05)
        for p, path in zip(procs, logs, strict=True):
            if p.returncode:
                raise RuntimeError(f"encoding the corpus failed:\n{open(path).read()[-3000:]}")
    finally:
        for p, f in zip(procs, files, strict=True):
            if p.poll() is None:
                p.kill()
                p.wait()
            f.close()


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
    files = _shard_paths(build, len(shards))
    held_out = _held_out_draws(shards, files, eval_fraction)
    docs, bad = {"train": 0, "eval": 0}, 0
    for shard, path in zip(shards, files, strict=True):
        with np.load(path) as z:
            tokens, lengths, bad = z["tokens"], z["lengths"], bad + int(z["bad"])
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
    if bad:
        log.warning("replaced %d invalid UTF-8 sequences with U+FFFD", bad)
    meta = {
        "documents": docs,
        "rows": {split: writers[split, "tokens"].rows for split in SPLITS},
        "token_dtype": tdt.name,
        "segment_dtype": sdt.name,
        "seq_len": seq_len,
        "shards": len(shards),
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
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
    """The packed rows of every split (memory-mapped), built into `path` if it is not there."""
    if not os.path.isdir(path):
        build_dir = f"{path}.build"
        os.makedirs(os.path.join(build_dir, "shards"), exist_ok=True)
        _encode_all(build_dir, shards, tokenizer, workers, path)
        lock = _FileLock(os.path.join(build_dir, "pack.lock"))
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
