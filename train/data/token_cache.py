"""The token cache: a corpus encoded and packed into rows once, streamed, in parallel, resumably.

    {cache}/packed/{key}/            the published cache (renamed into place when complete)
        train_tokens.npy  train_segment_ids.npy  eval_tokens.npy  eval_segment_ids.npy  meta.json
        (meta.json holds each file's size and SHA-256, checked every time the cache is opened)
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

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable

import numpy as np

from models.errors import ConfigError
from train.data import corpus, packing, text
from train.data.corpus import Shard
from train.data.npy_rows import NpyRows, segment_dtype, token_dtype, writing
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
    docs, problems = corpus.read_documents(shard)
    tokens, lengths = tok.encode_arrays(docs, dtype, num_threads=threads)
    tmp = f"{out}.tmp-{os.getpid()}.npz"
    try:
        with writing(out):
            np.savez(tmp, tokens=tokens, lengths=lengths, problems=np.array(problems.to_json()))
            os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


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


def _readable(path: str) -> str | None:
    """Why an encoded shard cannot be read back whole (None if it can)."""
    try:
        with np.load(path) as z:
            tokens, lengths = z["tokens"], z["lengths"]
            text.ReadProblems.from_json(str(z["problems"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        return f"{type(e).__name__}: {e}"
    if int(lengths.sum()) != len(tokens):
        return f"its {len(tokens)} ids are not its documents' {int(lengths.sum())}"
    return None


def _drop_damaged_shards(build: str, n: int) -> None:
    """Removes each finished shard of an interrupted build that cannot be read back (a disk
    fault, a copy cut short), so that it is encoded again instead of failing every rerun."""
    for path in _shard_paths(build, n):
        problem = _readable(path) if os.path.exists(path) else None
        if problem:
            log.warning("encoded shard %s is damaged (%s): encoding it again", path, problem)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _encode_all(build: str, shards: list[Shard], tok: AnyTokenizer, workers: int, published: str) -> None:
    _drop_damaged_shards(build, len(shards))
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
    cmd = [sys.executable, "-m", "train.data.encode_worker", build, str(os.getpid())]
    procs = [subprocess.Popen(cmd, env=env, stderr=f) for f in files]
    t0, last = time.perf_counter(), 0.0
    try:
        while any(p.poll() is None for p in procs):
            for p, path in zip(procs, logs, strict=True):
                if p.returncode:  # one failed: the others would fail the same way
                    _raise_worker_failure(p.returncode, path)
            if time.perf_counter() - last > 10:
                last = time.perf_counter()
                done = sum(os.path.exists(p) for p in _shard_paths(build, len(shards)))
                log.info("encoded %d/%d shards (%d workers, %.0f s)", done, len(shards), n, last - t0)
            time.sleep(0.05)
        for p, path in zip(procs, logs, strict=True):
            if p.returncode:
                _raise_worker_failure(p.returncode, path)
    finally:
        for p, f in zip(procs, files, strict=True):
            if p.poll() is None:
                p.kill()
                p.wait()
            f.close()


WORKER_WRITE_FAILED = 4  # an encode worker's exit status when it cannot write its shard


def _raise_worker_failure(status: int, log_path: str) -> None:
    text_ = open(log_path).read()
    if status == WORKER_WRITE_FAILED:  # the worker's one line names the file and the error
        raise OSError(text_.strip().splitlines()[-1].removeprefix("error: "))
    raise RuntimeError(f"encoding the corpus failed:\n{text_[-3000:]}")


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
        "files": {os.path.basename(w.path): file_record(w.path) for w in writers.values()},
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
        _set_aside_if_damaged(path, tokenizer.vocab_size)
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


# -- integrity ----------------------------------------------------------------------------------

_READ_BYTES = 16 * 2**20


def file_record(path: str) -> dict:
    """What a cache file is checked against when opened: its size and SHA-256."""
    with open(path, "rb") as f:
        return {"bytes": os.path.getsize(path), "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def damage(path: str, vocab_size: int) -> str | None:
    """What is wrong with the published cache `path`, naming the file, or None: a file missing,
    of another size, or whose bytes differ from the SHA-256 written with it (one read of each
    file; for token files the same read finds ids outside the vocabulary)."""
    try:
        recorded = meta(path)
    except (OSError, ValueError) as e:
        return f"meta.json cannot be read ({e})"
    for name, want in recorded.get("files", {}).items():
        file = os.path.join(path, name)
        if not os.path.exists(file):
            return f"{file} is missing"
        if os.path.getsize(file) != want["bytes"]:
            return f"{file} has {os.path.getsize(file):,} bytes, {want['bytes']:,} when written"
        digest, top = _digest_and_max(file, np.dtype(recorded["token_dtype"]) if "tokens" in name else None)
        if digest != want["sha256"]:
            ids = (
                f"; it holds ids up to {top}, outside the vocabulary of {vocab_size}"
                if top >= vocab_size
                else ""
            )
            return f"{file} differs from the checksum written with it (its bytes changed since){ids}"
    if "files" not in recorded:
        return f"{path}/meta.json holds no checksums"
    return None


def _digest_and_max(file: str, dtype: np.dtype | None) -> tuple[str, int]:
    """The file's SHA-256 and, for a token file, its largest id (-1 otherwise)."""
    sha, top, first = hashlib.sha256(), -1, True
    with open(file, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            sha.update(chunk)
            if dtype is not None:
                body = chunk[_data_offset(chunk) if first else 0 :]
                body = body[: len(body) - len(body) % dtype.itemsize]
                if body:
                    top = max(top, int(np.frombuffer(body, dtype).max()))
            first = False
    return sha.hexdigest(), top


def _data_offset(head: bytes) -> int:
    """Where an .npy file's data starts (after its magic, version and header)."""
    size = int.from_bytes(head[8:10], "little") if head[6] == 1 else int.from_bytes(head[8:12], "little")
    return (10 if head[6] == 1 else 12) + size


def _set_aside_if_damaged(path: str, vocab_size: int) -> None:
    """Moves a damaged cache to `PATH.damaged-TIME` (kept for a look, never deleted) with a warning
    naming what is wrong; the caller then rebuilds it from the corpus."""
    problem = damage(path, vocab_size)
    if problem is None:
        return
    aside = f"{path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process of the run moved it first
        return
    log.warning("token cache damaged: %s; moved to %s and rebuilt from the corpus", problem, aside)


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
