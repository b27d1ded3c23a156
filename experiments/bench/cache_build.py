"""The token cache build alone: seconds, MB of text per second and the peak memory of the process
tree (sampled every 20 ms), for one cold build with a given tokenizer.

    python experiments/bench/cache_build.py --corpus '/tmp/c100/*.txt' --tokenizer runs/x/tokenizer.model \
        --workers 2 [--repo DIR]

Run as a file, not a module, so that `--repo` can point at another checkout (a worktree of an
older commit) and measure its build the same way; `taskset -c 0` limits it to one core. It uses
only `make_source`, which every version has. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time


class PeakMemory:
    """Context manager: the peak resident memory of this process and its children, sampled every
    20 ms while inside (`peak` bytes; `before`: this process's at entry). Also used by
    experiments.bench.input; this file imports only the standard library at the top, so that it
    runs against another checkout's code."""

    def __init__(self) -> None:
        self.peak, self.before = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        import psutil

        self.before = psutil.Process().memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a glob of text files")
    parser.add_argument("--tokenizer", required=True, help="a SentencePiece tokenizer.model")
    parser.add_argument("--workers", type=int, default=0, help="data_workers (0: one per core)")
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.repo))
    import configs.gpt as gpt
    from train.data import text
    from train.data.sources import make_source

    with tempfile.TemporaryDirectory() as tmp:
        c = gpt.get_config("tiny")
        c.dataset, c.data_cache_dir, c.tokenizer.path = f"text:{args.corpus}", f"{tmp}/cache", args.tokenizer
        c.tokenizer.vocab_size, c.seq_len = 4096, 128
        if "data_workers" in c:
            c.data_workers = args.workers
        with PeakMemory() as memory:
            start = time.perf_counter()
            source = make_source(c, f"{tmp}/workdir")
            seconds = time.perf_counter() - start
        mb = sum(os.path.getsize(p) for p in text.list_files(args.corpus)) / 2**20
        # Commits before the streamed cache have no `rows`: read their two attributes instead.
        rows = source.rows if hasattr(source, "rows") else {"train": source._train, "eval": source._eval}
        packed = os.path.join(tmp, "cache", "packed")
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(packed) for f in files)
        result = {
            "repo": os.path.abspath(args.repo),
            "corpus_mb": round(mb, 1),
            "workers": args.workers,
            "seconds": round(seconds, 2),
            "mb_per_sec": round(mb / seconds, 2),
            "peak_rss_gb": round(memory.peak / 2**30, 3),
            "rss_before_gb": round(memory.before / 2**30, 3),
            "rows": sum(len(t) for t, _ in rows.values()),
            "cache_disk_mb": round(disk / 2**20, 1),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
