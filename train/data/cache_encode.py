"""The token cache's first step: each shard of the corpus encoded into `BUILD/shards/NNNNN.npz`
(ids, document lengths, what reading it found), by worker processes
(`python -m train.data.encode_worker`) and the builder alike, each shard written atomically
and claimed through a file lock so that every process building the cache shares the work
(train/data/token_cache.py packs and publishes the result).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
import zipfile

import numpy as np

from train.data import corpus, text
from train.data.corpus import Shard
from train.data.npy_rows import token_dtype, writing
from train.tokenizer.files import AnyTokenizer

log = logging.getLogger(__name__)


class FileLock:
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


def shard_paths(build: str, n: int) -> list[str]:
    return [os.path.join(build, "shards", f"{i:05d}.npz") for i in range(n)]


def encode_claimed(build: str, shards: list[Shard], tok: AnyTokenizer, threads: int, published: str) -> None:
    """Encodes here, one by one, each shard that no process has finished or holds; then waits for
    the shards others hold (a claim of a process that died is released, and the shard is encoded
    here). Run by every worker and builder alike: the locks make them share the work."""
    paths, dtype = shard_paths(build, len(shards)), token_dtype(tok.vocab_size)
    for blocking in (False, True):
        for i, path in enumerate(paths):
            if os.path.exists(path) or os.path.exists(published):
                continue
            claim = FileLock(path + ".lock")
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
    for path in shard_paths(build, n):
        problem = _readable(path) if os.path.exists(path) else None
        if problem:
            log.warning("encoded shard %s is damaged (%s): encoding it again", path, problem)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def encode_all(build: str, shards: list[Shard], tok: AnyTokenizer, workers: int, published: str) -> None:
    _drop_damaged_shards(build, len(shards))
    todo = [p for p in shard_paths(build, len(shards)) if not os.path.exists(p)]
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
                done = sum(os.path.exists(p) for p in shard_paths(build, len(shards)))
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
