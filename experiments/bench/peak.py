"""Timing one call; the peak FLOP/s MFU is measured against lives in train/observe/flops.py."""

from __future__ import annotations

import time
from collections.abc import Callable


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of `fn` (which waits for its device work itself)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
