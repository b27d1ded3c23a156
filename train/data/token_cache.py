"""The token cache: a corpus encoded and packed into rows once, streamed, in parallel, resumably.

    {cache}/packed/{key}/            the published cache (renamed into place when complete)
        train_tokens.npy  train_segment_ids.npy  eval_tokens.npy  eval_segment_ids.npy  meta.json
    {cache}/packed/{key}.build/      while building: shards/NNNNN.npz (ids and document lengths)

1. Encode: each shard (train/data/corpus.py) is read and encoded by a worker process and written
   atomically; a build killed part-way keeps its finished shards. Processes building the same
   cache (the hosts of a multi-process run on a shared filesystem, or two launches) claim shards
   through file locks, so each shard is encoded once; a claim dies with its process.
2. Pack: one process (under a lock) streams the encoded shards in order through `StreamPacker`
   into .npy files written row by row, then renames the folder into place.
Memory during the build is bounded by a shard per worker, not by the corpus. Tokens are stored
in the smallest unsigned type that holds the vocabulary, segment ids in one that holds seq_len.
"""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from models.errors import ConfigError
from train.data import corpus, packing, text
from train.data.corpus import Shard
from train.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
_HEADER_BYTES = 128  # .npy header written first with room for the final shape


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def segment_dtype(seq_len: int) -> np.dtype:
    return np.dtype(np.uint8 if seq_len < 2**8 else np.uint16 if seq_len < 2**16 else np.uint32)


class NpyRows:
    """A 2-D .npy file written row block by row block; the header gets its shape at `close`."""

    def __init__(self, path: str, dtype: np.dtype, row_len: int):
        self.path, self.dtype, self.row_len, self.rows = path, dtype, row_len, 0
        self._file = open(path, "wb")
        self._file.write(b"\0" * _HEADER_BYTES)

    def append(self, rows: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(rows, self.dtype).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        text_ = repr({**header, "shape": (self.rows, self.row_len)}).encode("latin1")
        pad = _HEADER_BYTES - 10 - len(text_) - 1
        self._file.seek(0)
        self._file.write(b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little"))
        self._file.write(text_ + b" " * pad + b"\n")
        self._file.close()


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


# -- workers ------------------------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(model_proto: bytes) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(model_proto)


def _encode_shard(shard: Shard, out: str, dtype: str, threads: int, tok: Tokenizer | None = None) -> dict:
    tok = tok or _worker_tokenizer
    t0 = time.perf_counter()
    docs, bad = corpus.read_documents(shard)
    tokens, lengths = tok.encode_arrays(docs, np.dtype(dtype), num_threads=threads)
    tmp = f"{out}.tmp-{os.getpid()}.npz"
    np.savez(tmp, tokens=tokens, lengths=lengths, bad=np.int64(bad))
    os.replace(tmp, out)
    return {"docs": len(docs), "chars": sum(map(len, docs)), "seconds": time.perf_counter() - t0}


class _Inline(cf.Executor):
    """Runs in the calling process: a single shard or worker does not pay for a pool."""

    def submit(self, fn: Callable, /, *args, **kwargs) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:
            future.set_exception(e)
        return future


def _executor(workers: int, jobs: int, tokenizer: Tokenizer | None) -> cf.Executor:
    if workers <= 1 or jobs <= 1:
        return _Inline()
    # Spawned, not forked: the parent may already run JAX's threads.
    return cf.ProcessPoolExecutor(
        min(workers, jobs),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker if tokenizer else None,
        initargs=(tokenizer.model_proto,) if tokenizer else (),
    )


def map_shards(fn: Callable, shards: list[Shard], workers: int) -> list[Any]:
    """`fn(shard)` for every shard, in order, on `workers` processes (no locks, no files)."""
    with _executor(workers, len(shards), None) as ex:
        return list(ex.map(fn, shards))


def default_workers(config_workers: int, shards: list[Shard]) -> int:
    """Worker processes for `shards`. TFDS shards are read in this process (a spawned worker
    would not see a dataset registered or mocked here); SentencePiece's own threads still
    encode them on every core."""
    if any(s.kind == "tfds" for s in shards):
        return 1
    return config_workers if config_workers > 0 else (os.cpu_count() or 1)


# -- build ----------------------------------------------------------------------------------------


def _encode_all(build: str, shards: list[Shard], tok: Tokenizer, workers: int, published: str) -> None:
    paths = [os.path.join(build, "shards", f"{i:05d}.npz") for i in range(len(shards))]
    todo = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    if not todo:
        return
    inline = workers <= 1 or len(todo) == 1
    dtype = token_dtype(tok.vocab_size).str
    threads = (os.cpu_count() or 1) if inline else 1
    t0, chars, done = time.perf_counter(), 0, len(shards) - len(todo)
    with _executor(workers, len(todo), tok) as ex:
        running: dict[cf.Future, tuple[int, _FileLock]] = {}

        def finish(wait_all: bool) -> None:
            nonlocal chars, done
            finished, _ = cf.wait(running, return_when=cf.ALL_COMPLETED if wait_all else cf.FIRST_COMPLETED)
            for f in finished:
                i, claim = running.pop(f)
                claim.release()
                stats = f.result()
                log.debug("encoded shard %d", i)
                chars, done = chars + stats["chars"], done + 1
            mb = chars / 2**20
            rate = mb / (time.perf_counter() - t0)
            log.info("encoded %d/%d shards, %.0f MB at %.1f MB/s", done, len(shards), mb, rate)

        # First pass: the shards no other process holds. Second: wait for the others' (a claim
        # of a process that died is released, and the shard is encoded here).
        for blocking in (False, True):
            for i in todo:
                if os.path.exists(published):
                    return
                claim = _FileLock(paths[i] + ".lock")
                if not claim.acquire(blocking) or os.path.exists(paths[i]):
                    claim.release()
                    continue
                extra = (tok,) if inline else ()
                running[ex.submit(_encode_shard, shards[i], paths[i], dtype, threads, *extra)] = (i, claim)
                if len(running) >= max(workers, 1):
                    finish(wait_all=False)
            if running:
                finish(wait_all=True)


def _pack(build: str, shards: list[Shard], seq_len: int, vocab_size: int, eval_fraction: float) -> dict:
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

    packers = {split: packing.StreamPacker(seq_len, emitter(split), tdt, sdt) for split in SPLITS}
    files = [os.path.join(build, "shards", f"{i:05d}.npz") for i in range(len(shards))]
    n_docs = [int(np.load(f)["lengths"].shape[0]) for f in files]
    split_docs = sum(n for n, s in zip(n_docs, shards, strict=True) if s.role == "split")
    if split_docs == 0 and any(s.role == "split" for s in shards):
        raise ConfigError(text.no_text_message(sum(len(s.spec) - 1 for s in shards)))
    held_out = text.HeldOut(split_docs, eval_fraction) if split_docs else None
    docs, bad = {"train": 0, "eval": 0}, 0
    for shard, path in zip(shards, files, strict=True):
        with np.load(path) as z:
            tokens, lengths, bad = z["tokens"], z["lengths"], bad + int(z["bad"])
        if shard.role == "split":
            held = held_out.take(len(lengths))
        else:
            held = np.full(len(lengths), shard.role == "eval")
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
    tokenizer: Tokenizer,
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
                packed = _pack(build_dir, shards, seq_len, tokenizer.vocab_size, eval_fraction)
                os.rename(packed["out"], path)
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
