"""A worker of the token cache's build: `python -m train.data.encode_worker BUILD_DIR LAUNCHER_PID`.

Reads the plan the builder wrote into BUILD_DIR (the shards and the tokenizer) and encodes,
through the same file locks as every other worker and builder, the shards nobody else has
(train/data/token_cache.py). Started as a fresh interpreter, it imports neither JAX nor the
caller's script. It ends when its launcher does, even one killed without a word (SIGKILL):
finished shards are written atomically, so nothing is lost and the next build resumes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from train.data import cache_encode
from train.data.corpus import Shard
from train.data.npy_rows import CacheWriteError
from train.tokenizer.files import load_tokenizer


def end_with(launcher: int) -> None:
    """Exits this process once `launcher` is no longer its parent (it died; we were reparented)."""

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(0.02)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="end-with-launcher").start()


def main(build: str) -> None:
    with open(os.path.join(build, "plan.json")) as f:
        plan = json.load(f)
    shards = [
        Shard(**{**d, "spec": tuple(d["spec"]), "keep": None if d["keep"] is None else tuple(d["keep"])})
        for d in plan["shards"]
    ]
    tok = load_tokenizer(os.path.join(build, plan["tokenizer"]))
    try:
        cache_encode.encode_claimed(build, shards, tok, threads=1, published=plan["published"])
    except CacheWriteError as e:  # one line for the launcher to report (disk full, a size limit)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(cache_encode.WORKER_WRITE_FAILED)


if __name__ == "__main__":
    end_with(int(sys.argv[2]))
    main(sys.argv[1])
