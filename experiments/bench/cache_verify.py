"""What checking the token cache costs: a cache of random rows of a given size is written as a
build writes it, then opened as a run opens it (checksums and the largest id verified, then
memory-mapped), three times.

    python -m experiments.bench.cache_verify --mb 300

Prints one JSON line: the cache's size, the seconds to write its files and to checksum them at
build, and each open's verify and mmap seconds (warm page cache after the first).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from train.data import cache_integrity, token_cache
from train.data.npy_rows import NpyRows

ROW = 1024
VOCAB = 8192


def write_cache(path: str, megabytes: int) -> dict[str, float]:
    """Random uint16 tokens and uint8 segment ids (3 bytes per position) of about `megabytes`."""
    rows = megabytes * 10**6 // (3 * ROW)
    split = {"train": rows - rows // 20, "eval": rows // 20}
    rng, t = np.random.default_rng(0), time.perf_counter()
    for name, n in split.items():
        for what, dtype, high in (("tokens", np.uint16, VOCAB), ("segment_ids", np.uint8, 8)):
            out = NpyRows(os.path.join(path, f"{name}_{what}.npy"), np.dtype(dtype), ROW)
            for i in range(0, n, 4096):
                out.append(rng.integers(0, high, (min(4096, n - i), ROW)).astype(dtype))
            out.close()
    written = time.perf_counter() - t
    t = time.perf_counter()
    files = {name: cache_integrity.file_record(os.path.join(path, name)) for name in os.listdir(path)}
    checksums = time.perf_counter() - t
    meta = {"rows": split, "token_dtype": "uint16", "segment_dtype": "uint8", "seq_len": ROW}
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump({**meta, "vocab_size": VOCAB, "files": files}, f)
    return {"mb": sum(r["bytes"] for r in files.values()) / 1e6, "write_s": written, "checksum_s": checksums}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.cache_verify")
    parser.add_argument("--mb", type=int, default=300, help="the cache's size in MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as path:
        out = write_cache(path, args.mb)
        opens = []
        for _ in range(3):
            t = time.perf_counter()
            assert cache_integrity.damage(path, VOCAB) is None
            verified = time.perf_counter() - t
            token_cache.load(path)
            opens.append(
                {"verify_s": round(verified, 3), "mmap_s": round(time.perf_counter() - t - verified, 4)}
            )
    print(json.dumps({**{k: round(v, 2) for k, v in out.items()}, "opens": opens}))


if __name__ == "__main__":
    main()
