"""TFDS's mock data in tests (test_token_cache.py, test_finetune.py, test_compare.py,
test_scoring.py), without the folders it leaves behind."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest


@contextlib.contextmanager
def mock_data(folder: Any, num_examples: int) -> Iterator[Any]:
    """`tfds.testing.mock_data(num_examples=...)`, yielding `tensorflow_datasets`. A mocked
    dataset has no prepared description, so every time TFDS builds one (each `data_source` call,
    in any thread) it makes an empty folder in the system's temporary directory to copy one from
    its bucket, and never removes it: within this block those go into `folder` (a test's
    tmp_path), not /tmp."""
    tfds = pytest.importorskip("tensorflow_datasets")
    outer, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        with tfds.testing.mock_data(num_examples=num_examples):
            yield tfds
    finally:
        tempfile.tempdir = outer
