"""Input-pipeline throughput: how many tokens/s the train stream delivers, host side and on device.

    python -m experiments.tools.make_text_corpus --out /tmp/corpus --files 2000
    python -m experiments.bench.input --config configs/gpt.py:tiny \
        --config.dataset=text:'/tmp/corpus/*.txt' --config.tokenizer.vocab_size=4096

Prints one JSON line: the seconds to build the source cold (tokenizer training, tokenizing and
packing into an empty cache) and warm (everything cached, as on a resumed run), and tokens/s of
`next(iterator)` alone and with the transfer to device arrays, over `--batches` batches.
"""

from __future__ import annotations

import json
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from train.data.sources import make_source
from train.mesh import batch_sharding, make_mesh, to_global

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py:<variant>")
_BATCHES = flags.DEFINE_integer("batches", 2000, "Batches to time after 20 of warm-up.")


def _tokens_per_sec(iterator, n: int, tokens_per_batch: int, put=None) -> float:
    for _ in range(20):
        next(iterator)
    start = time.perf_counter()
    for _ in range(n):
        batch = next(iterator)
        if put is not None:
            jax.block_until_ready(put(batch))
    return n * tokens_per_batch / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    with tempfile.TemporaryDirectory() as tmp:
        if not config.data_cache_dir:
            config.data_cache_dir = f"{tmp}/cache"
        start = time.perf_counter()
        make_source(config, f"{tmp}/cold")
        cold = time.perf_counter() - start
        start = time.perf_counter()
        source = make_source(config, f"{tmp}/warm")
        warm = time.perf_counter() - start
        tokens = config.batch_size * config.seq_len
        sharding = batch_sharding(make_mesh(config))
        result = {
            "dataset": config.dataset,
            "batch_size": config.batch_size,
            "seq_len": config.seq_len,
            "build_seconds_cold": round(cold, 2),
            "build_seconds_warm": round(warm, 2),
            "host_tokens_per_sec": round(_tokens_per_sec(source.train_iterator(), _BATCHES.value, tokens)),
            "device_tokens_per_sec": round(
                _tokens_per_sec(
                    source.train_iterator(), _BATCHES.value, tokens, lambda b: to_global(b, sharding)
                )
            ),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
