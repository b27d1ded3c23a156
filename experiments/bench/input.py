"""Input pipeline: how fast the token cache is built, how much memory that takes, and how many
tokens/s the train stream then delivers, host side and on device.

    python -m experiments.tools.make_text_corpus --out /tmp/c100 --files 2500 --paragraphs 40
    python -m experiments.bench.input --config configs/gpt.py:tiny \
        --config.dataset=text:'/tmp/c100/*.txt' --config.tokenizer.vocab_size=4096

Prints one JSON line. The build is timed in two parts, each into an empty cache: training the
tokenizer (its sample read from the corpus), then encoding and packing the corpus with that
tokenizer (`cache_*`: MB of text and tokens per second, the peak resident memory of the build
summed over its worker processes, sampled every 20 ms, next to this process's own before the
build, and the cache's size on disk). A warm
build (everything cached, as on a resumed run) and the iterator's tokens/s follow. Compare core
counts with `--config.data_workers=1` and `=2`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments.bench.cache_build import PeakMemory
from train.data import text
from train.data.sources import make_source
from train.devices.mesh import batch_sharding, make_mesh, to_global
from train.devices.platform import skip_absent_accelerators

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


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv: list[str]) -> None:
    del argv
    skip_absent_accelerators()  # no model runs: the host allocator stays (train/devices/platform.py)
    config = _CONFIG.value
    corpus_bytes = sum(os.path.getsize(p) for p in text.list_files(config.dataset.partition(":")[2]))
    with tempfile.TemporaryDirectory() as tmp:
        cache = config.data_cache_dir or f"{tmp}/cache"
        config.data_cache_dir = f"{tmp}/tokenizer_cache"
        start = time.perf_counter()
        make_source(config, f"{tmp}/cold")  # trains the tokenizer (and builds a first cache)
        cold = time.perf_counter() - start
        config.data_cache_dir, config.tokenizer.path = cache, f"{tmp}/cold/tokenizer.model"
        with PeakMemory() as memory:  # `before`: this process at entry (JAX, the first source)
            start = time.perf_counter()
            source = make_source(config, f"{tmp}/build")
            build = time.perf_counter() - start
        start = time.perf_counter()
        make_source(config, f"{tmp}/warm")
        warm = time.perf_counter() - start
        tokens = config.batch_size * config.seq_len
        cached_tokens = sum(int((s[:] > 0).sum()) for _, s in source.rows.values())
        sharding = batch_sharding(make_mesh(config))
        result = {
            "dataset": config.dataset,
            "corpus_mb": round(corpus_bytes / 2**20, 1),
            "documents": source.documents,
            "batch_size": config.batch_size,
            "seq_len": config.seq_len,
            "workers": config.data_workers or os.cpu_count(),
            "cold_seconds_with_tokenizer_training": round(cold, 2),
            "cache_seconds": round(build, 2),
            "cache_mb_text_per_sec": round(corpus_bytes / 2**20 / build, 2),
            "cache_tokens_per_sec": round(cached_tokens / build),
            "cache_peak_rss_gb": round(memory.peak / 2**30, 3),
            "rss_before_cache_gb": round(memory.before / 2**30, 3),
            "cache_disk_mb": round(_folder_bytes(os.path.join(cache, "packed")) / 2**20, 1),
            "warm_seconds": round(warm, 2),
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
