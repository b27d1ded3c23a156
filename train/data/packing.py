"""Packing tokenized documents into fixed-length rows, and the on-disk cache of packed rows.

Each document becomes `[BOS] + ids + [EOS]`. A document longer than a row is cut into row-sized
chunks (nothing is dropped); each chunk is its own segment with positions from 0. Chunks are
placed in order, a new row starting when the next chunk does not fit. Segment ids number the
chunks of a row from 1 (0 is padding), so attention never crosses a document boundary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np

from train.data.vocab import BOS_ID, EOS_ID


def pack(docs_ids: Sequence[Sequence[int]], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens `[R, L]` int32, segment_ids `[R, L]` int32) holding every token exactly once."""
    rows_tok: list[np.ndarray] = []
    rows_seg: list[np.ndarray] = []
    cur_tok = np.zeros(seq_len, np.int32)
    cur_seg = np.zeros(seq_len, np.int32)
    fill, n_seg = 0, 0
    for ids in docs_ids:
        doc = np.concatenate([[BOS_ID], np.asarray(ids, np.int32), [EOS_ID]]).astype(np.int32)
        for start in range(0, len(doc), seq_len):
            chunk = doc[start : start + seq_len]
            if fill + len(chunk) > seq_len:
                rows_tok.append(cur_tok)
                rows_seg.append(cur_seg)
                cur_tok, cur_seg = np.zeros(seq_len, np.int32), np.zeros(seq_len, np.int32)
                fill, n_seg = 0, 0
            n_seg += 1
            cur_tok[fill : fill + len(chunk)] = chunk
            cur_seg[fill : fill + len(chunk)] = n_seg
            fill += len(chunk)
    if fill:
        rows_tok.append(cur_tok)
        rows_seg.append(cur_seg)
    if not rows_tok:
        return np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), np.int32)
    return np.stack(rows_tok), np.stack(rows_seg)


def positions_from_segments(segment_ids: np.ndarray) -> np.ndarray:
    """Position of each token inside its segment (0 on padding), for any leading shape."""
    L = segment_ids.shape[-1]
    idx = np.broadcast_to(np.arange(L, dtype=np.int32), segment_ids.shape)
    starts_here = np.ones(segment_ids.shape, bool)
    starts_here[..., 1:] = segment_ids[..., 1:] != segment_ids[..., :-1]
    start = np.maximum.accumulate(np.where(starts_here, idx, 0), axis=-1)
    return np.where(segment_ids > 0, idx - start, 0).astype(np.int32)


def cached_pack(
    path: str, build: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Packed rows from the folder `path` (memory-mapped), built and written atomically if absent."""
    if not os.path.isdir(path):
        tokens, segments = build()
        tmp = f"{path}.tmp-{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        np.save(os.path.join(tmp, "tokens.npy"), tokens)
        np.save(os.path.join(tmp, "segment_ids.npy"), segments)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same folder first
            shutil.rmtree(tmp, ignore_errors=True)
    return (
        np.load(os.path.join(path, "tokens.npy"), mmap_mode="r"),
        np.load(os.path.join(path, "segment_ids.npy"), mmap_mode="r"),
    )
