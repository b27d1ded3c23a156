"""Packing tokenized documents into fixed-length rows.

Each document becomes `[bos] + ids + [eos]` (the ids of the vocabulary's `Specials`). A
document longer than a row is cut into row-sized chunks (nothing is dropped); each chunk is its
own segment with positions from 0. Chunks are placed in order, a new row starting when the next
chunk does not fit. Segment ids number the chunks of a row from 1 (0 is padding), so attention
never crosses a document boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from train.tokenizer.vocab import DEFAULT, Specials


def pack(
    docs_ids: Sequence[Sequence[int]], seq_len: int, specials: Specials = DEFAULT
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens `[R, L]` int32, segment_ids `[R, L]` int32) holding every token exactly once."""
    rows_tok: list[np.ndarray] = []
    rows_seg: list[np.ndarray] = []
    cur_tok = np.zeros(seq_len, np.int32)
    cur_seg = np.zeros(seq_len, np.int32)
    fill, n_seg = 0, 0
    for ids in docs_ids:
        doc = np.concatenate([[specials.bos], np.asarray(ids, np.int32), [specials.eos]]).astype(np.int32)
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


class StreamPacker:
    """`pack` over documents that arrive in parts: the same rows, in bounded memory.

    Every token is placed with vectorised numpy; the one sequential part, which row each chunk
    starts (a new row when the next chunk does not fit), is a scan over the chunks' lengths as
    plain integers. The row still open at the end of a part is carried into the next, so rows
    do not depend on where the parts were cut. Complete rows go to `emit(tokens_RL, segments_RL)`
    in order, in the dtypes given.
    """

    def __init__(
        self,
        seq_len: int,
        emit: Callable[[np.ndarray, np.ndarray], None],
        token_dtype: np.dtype = np.int32,
        segment_dtype: np.dtype = np.int32,
        specials: Specials = DEFAULT,
    ):
        self.seq_len, self._emit, self._specials = seq_len, emit, specials
        self._token_dtype, self._segment_dtype = np.dtype(token_dtype), np.dtype(segment_dtype)
        self._carry_tokens = np.zeros(0, self._token_dtype)  # the open row's chunks, in order
        self._carry_lengths = np.zeros(0, np.int64)

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Documents given as their ids concatenated and their lengths (without BOS/EOS)."""
        L, lengths = self.seq_len, np.asarray(lengths, np.int64)
        doc_len = lengths + 2
        ends = np.cumsum(doc_len)
        stream = np.empty(int(ends[-1]) if len(ends) else 0, self._token_dtype)
        starts = ends - doc_len
        inner = np.ones(len(stream), bool)
        inner[starts], inner[ends - 1] = False, False
        stream[starts], stream[ends - 1], stream[inner] = self._specials.bos, self._specials.eos, tokens
        # A document longer than a row is cut into row-sized chunks; the last may be shorter.
        n_chunks = -(-doc_len // L)
        first_chunk = np.cumsum(n_chunks) - n_chunks
        doc_of = np.repeat(np.arange(len(doc_len)), n_chunks)
        k_in_doc = np.arange(int(n_chunks.sum())) - first_chunk[doc_of]
        chunk_len = np.minimum(L, doc_len[doc_of] - k_in_doc * L)
        self._place(
            np.concatenate([self._carry_tokens, stream]), np.concatenate([self._carry_lengths, chunk_len])
        )

    def finish(self) -> None:
        """Emits the open row, if any."""
        if len(self._carry_lengths):
            self._place(self._carry_tokens, self._carry_lengths, final=True)

    def _place(self, stream: np.ndarray, chunk_len: np.ndarray, final: bool = False) -> None:
        L, row, fill, rows = self.seq_len, 0, 0, []
        for n in chunk_len.tolist():  # the scan
            if fill + n > L:
                row, fill = row + 1, 0
            rows.append(row)
            fill += n
        row_of = np.asarray(rows, np.int64)
        done = row + 1 if final else row  # rows before the last are complete
        k_done = int(np.searchsorted(row_of, done))  # chunks in complete rows
        chunk_start = np.cumsum(chunk_len) - chunk_len
        n_done = int(chunk_start[k_done]) if k_done < len(chunk_len) else len(stream)
        self._carry_tokens, self._carry_lengths = stream[n_done:], chunk_len[k_done:]
        if done == 0:
            return
        row_of, chunk_len, chunk_start = row_of[:k_done], chunk_len[:k_done], chunk_start[:k_done]
        first_in_row = np.searchsorted(row_of, row_of)  # the row's first chunk
        offset = chunk_start - chunk_start[first_in_row]
        segment = np.arange(k_done) - first_in_row + 1
        dest = np.repeat(row_of * L + offset - chunk_start, chunk_len) + np.arange(n_done)
        tokens = np.zeros(done * L, self._token_dtype)
        segments = np.zeros(done * L, self._segment_dtype)
        tokens[dest] = stream[:n_done]
        segments[dest] = np.repeat(segment, chunk_len)
        self._emit(tokens.reshape(done, L), segments.reshape(done, L))
