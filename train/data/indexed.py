"""`IndexedBatches`: a train iterator whose batch i is a pure function of i.

The synthetic sources (the HMM corpus, the seq2seq tasks) draw batch i from a generator seeded
with i, so the iterator's whole state is the next index: a resumed run gets exactly the batches
an uninterrupted one would have. Each process keeps its own rows of every global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]


class IndexedBatches(Iterator[Batch]):
    """A resumable train iterator over a synthetic source whose batch i is a pure function of i;
    each process takes its rows of the global batch, and the state is just the next index."""

    def __init__(
        self, global_batch: Callable[[int], Batch], batch_size: int, process_index: int, process_count: int
    ):
        self._global_batch = global_batch
        self._next_index = 0
        per_process = batch_size // process_count
        self._rows = slice(process_index * per_process, (process_index + 1) * per_process)

    def __next__(self) -> Batch:
        batch = self._global_batch(self._next_index)
        self._next_index += 1
        return {k: v[self._rows] for k, v in batch.items()}

    def get_state(self) -> dict[str, int]:
        return {"next_index": self._next_index}

    def set_state(self, state: dict[str, int]) -> None:
        self._next_index = int(state["next_index"])
