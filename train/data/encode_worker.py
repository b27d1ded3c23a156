"""A worker of the token cache's build: `python -m train.data.encode_worker BUILD_DIR`.

Reads the plan the builder wrote into BUILD_DIR (the shards and the tokenizer) and encodes,
through the same file locks as every other worker and builder, the shards nobody else has
(train/data/token_cache.py). Started as a fresh interpreter, it imports neither JAX nor the
caller's script.
"""

from __future__ import annotations

import json
import os
import sys

from train.data import token_cache
from train.data.corpus import Shard
from train.tokenizer.files import load_tokenizer


def main(build: str) -> None:
    with open(os.path.join(build, "plan.json")) as f:
        plan = json.load(f)
    shards = [
        Shard(**{**d, "spec": tuple(d["spec"]), "keep": None if d["keep"] is None else tuple(d["keep"])})
        for d in plan["shards"]
    ]
    tok = load_tokenizer(os.path.join(build, plan["tokenizer"]))
    token_cache.encode_claimed(build, shards, tok, threads=1, published=plan["published"])


if __name__ == "__main__":
    main(sys.argv[1])
