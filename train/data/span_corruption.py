"""T5-style span corruption (Raffel et al. 2020) over any LM dataset: `dataset="span:BASE"`.

BASE is any language-modelling dataset (`hmm`, `text:GLOB`, `tfds:NAME`). Each row's real
tokens are split into alternating kept and noise spans (`noise_density` of the tokens are
noise, spans `mean_span` long on average, as in T5's `random_spans_noise_mask`). The encoder
reads the kept tokens with each noise span replaced by one sentinel; the decoder writes
[BOS, sentinel_1, span_1, sentinel_2, span_2, ..., EOS]. Sentinels are new ids after the base
vocabulary, so `vocab_size` grows by the number a row can need.

Batches have the keys of train/data/seq2seq_tasks.py. Corruption of row r of global batch i is
a pure function of (run seed, i, r), so the iterator's state is the base iterator's state and one
integer, and a run resumed on another process count draws the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from train.data.seq2seq_tasks import padded_row

_EVAL_STREAM = 0x5BA2


def _random_segmentation(rng: np.random.Generator, n: int, parts: int) -> np.ndarray:
    """`parts` positive lengths summing to `n`, uniformly over such compositions."""
    cuts = np.sort(rng.choice(np.arange(1, n), parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [n]]))


def corrupt(
    tokens_N: np.ndarray,
    rng: np.random.Generator,
    noise_density: float,
    mean_span: float,
    first_sentinel: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(encoder input, decoder target without BOS/EOS) for one sequence of real tokens."""
    n = len(tokens_N)
    num_noise = min(max(int(round(n * noise_density)), 1), n - 1)
    num_spans = max(int(round(num_noise / mean_span)), 1)
    num_spans = min(num_spans, num_noise, n - num_noise)
    noise_lengths = _random_segmentation(rng, num_noise, num_spans)
    keep_lengths = _random_segmentation(rng, n - num_noise, num_spans)
    inputs, targets, pos = [], [], 0
    for i, (keep, noise) in enumerate(zip(keep_lengths, noise_lengths, strict=True)):
        inputs += list(tokens_N[pos : pos + keep]) + [first_sentinel + i]
        pos += keep
        targets += [first_sentinel + i] + list(tokens_N[pos : pos + noise])
        pos += noise
    return np.asarray(inputs, np.int32), np.asarray(targets, np.int32)


def max_spans(seq_len: int, noise_density: float, mean_span: float) -> int:
    return max(int(round(math.ceil(seq_len * noise_density) / mean_span)), 1) + 1


class SpanCorruptionSource:
    """T5 span corruption over a language-modelling source: spans of mean length `mean_span`
    covering `noise_density` of each row are replaced by sentinels in the encoder's input and
    written out after their sentinels as the target."""

    def __init__(self, base: Any, seq_len: int, noise_density: float, mean_span: float, seed: int):
        if not 0.0 < noise_density < 1.0 or mean_span < 1.0:
            raise ValueError(
                f"seq2seq.noise_density={noise_density} must be in (0, 1) and "
                f"seq2seq.mean_span={mean_span} at least 1"
            )
        self.base, self.seq_len, self.seed = base, seq_len, seed
        self.noise_density, self.mean_span = noise_density, mean_span
        self.first_sentinel, self.specials = base.vocab_size, base.specials
        self.vocab_size = base.vocab_size + max_spans(seq_len, noise_density, mean_span)
        # Targets hold every noise token, a sentinel per span, BOS and EOS.
        self.target_len = (
            math.ceil(seq_len * noise_density) + max_spans(seq_len, noise_density, mean_span) + 2
        )

    def corrupt_batch(
        self, batch: dict[str, np.ndarray], rngs: list[np.random.Generator]
    ) -> dict[str, np.ndarray]:
        """`rngs[r]` draws row r's spans (one generator may serve every row)."""
        rows = []
        for tokens_L, seg_L, rng in zip(batch["tokens"], batch["segment_ids"], rngs, strict=True):
            real = tokens_L[seg_L != 0]
            if len(real) < 2:  # a padding row stays padding
                src, tgt = np.zeros(0, np.int32), np.zeros(0, np.int32)
            else:
                inputs, targets = corrupt(real, rng, self.noise_density, self.mean_span, self.first_sentinel)
                src, tgt = inputs, np.concatenate([[self.specials.bos], targets, [self.specials.eos]])
            rows.append(
                {
                    **{f"src_{k}": v for k, v in padded_row(src, self.seq_len).items()},
                    **padded_row(tgt, self.target_len),
                }
            )
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def train_iterator(self, process_index: int = 0, process_count: int = 1) -> _SpanIterator:
        first_row = process_index * (self.base.batch_size // process_count)
        return _SpanIterator(self, self.base.train_iterator(process_index, process_count), first_row)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        batches = self.base.eval_batches()
        rngs = [np.random.default_rng([_EVAL_STREAM, i]) for i in range(len(batches))]
        return [self.corrupt_batch(b, [rng] * len(b["tokens"])) for b, rng in zip(batches, rngs, strict=True)]


class _SpanIterator(Iterator[dict[str, np.ndarray]]):
    def __init__(self, source: SpanCorruptionSource, base_iter: Any, first_row: int):
        self._source, self._base, self._first_row = source, base_iter, first_row
        self._next_index = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._base)
        seed, i, r0 = self._source.seed, self._next_index, self._first_row
        rngs = [np.random.default_rng([seed, i, r0 + r]) for r in range(len(batch["tokens"]))]
        self._next_index += 1
        return self._source.corrupt_batch(batch, rngs)

    def get_state(self) -> dict[str, Any]:
        return {"base": self._base.get_state(), "next_index": self._next_index}

    def set_state(self, state: dict[str, Any]) -> None:
        self._base.set_state(state["base"])
        self._next_index = int(state["next_index"])
