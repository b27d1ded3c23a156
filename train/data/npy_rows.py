"""The token cache's file format: 2-D `.npy` files of narrow unsigned rows, written row block by
row block (memory bounded by a block, not the corpus), read back memory-mapped by numpy.

Tokens are stored in the smallest unsigned type that holds the vocabulary, segment ids in one
that holds the row length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

_HEADER_BYTES = 128  # .npy header written first with room for the final shape


class CacheWriteError(OSError):
    """A token cache file that could not be written (disk full, a file-size limit, permissions),
    named with the error; what the build finished before stays for the next launch."""

    def __init__(self, path: str, error: OSError):
        super().__init__(error.errno, f"writing the token cache file {path}: {error.strerror or error}")


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turns an OSError while writing `path` into a `CacheWriteError` naming it."""
    try:
        yield
    except CacheWriteError:
        raise
    except OSError as e:
        raise CacheWriteError(path, e) from e


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def segment_dtype(seq_len: int) -> np.dtype:
    return np.dtype(np.uint8 if seq_len < 2**8 else np.uint16 if seq_len < 2**16 else np.uint32)


class NpyRows:
    """A 2-D .npy file written row block by row block; the header gets its shape at `close`."""

    def __init__(self, path: str, dtype: np.dtype, row_len: int):
        self.path, self.dtype, self.row_len, self.rows = path, dtype, row_len, 0
        with writing(path):
            self._file = open(path, "wb")
            self._file.write(b"\0" * _HEADER_BYTES)

    def append(self, rows: np.ndarray) -> None:
        with writing(self.path):
            self._file.write(np.ascontiguousarray(rows, self.dtype).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        text_ = repr({**header, "shape": (self.rows, self.row_len)}).encode("latin1")
        pad = _HEADER_BYTES - 10 - len(text_) - 1
        with writing(self.path):
            self._file.seek(0)
            self._file.write(b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little"))
            self._file.write(text_ + b" " * pad + b"\n")
            self._file.close()
