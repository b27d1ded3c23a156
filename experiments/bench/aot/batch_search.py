"""The largest per-device batch whose train step fits a device's memory, found in few compiles.

Each compile for a TPU slice takes minutes at GPT-2's size, so the search chooses its batches:
without a hint, two compiles that fit put memory on a line in the batch, the batch where the line
meets the limit is compiled, and the search steps from there; with a hint (a batch expected near
the answer, such as the same model's largest on the same slice with the state sharded otherwise),
it steps 1, 2, 4, ... rows away from the hint until one step crosses the boundary, then halves.
Either way it ends holding one batch that fits and the next that does not.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from experiments.bench.aot.targets import Target
from train.devices.chips import GIB


class Compiled(Protocol):
    """What the search reads of a compile (experiments/bench/aot/compile.py's `Compiled`)."""

    fits: bool
    memory: dict[str, int]  # "peak_bytes" per chip when it fits
    error: str  # the compiler's refusal when it does not


# Where the search stops: more rows per chip than any run here would use.
MAX_BATCH = 4096


def hbm_limit(compiled: list[Compiled], target: Target) -> float:
    """The bytes a device's program may use: the target's limit where it sets one (GPU), else
    what the TPU compiler said when it refused one (the data sheet's HBM less what the runtime
    keeps), else the data sheet's HBM."""
    if target.memory_limit is not None:
        return target.memory_limit
    for c in compiled:
        match = re.search(r"available HBM \(([\d.]+)G\)", c.error)
        if match:
            return float(match.group(1)) * GIB
    return target.chip.hbm_bytes


def next_batch(
    tried: dict[int, Compiled], limit: float, max_batch: int = MAX_BATCH, hint: int | None = None
) -> int | None:
    """The next per-device batch to compile, or None once the largest that fits is known (it
    fits and the next does not; 0 when even one row does not; `max_batch` when that fits). A
    `hint` still inside the bracket comes first, then steps that double away from it; without
    one, with two batches that fit, the guess is where the line through their peaks meets
    `limit`; else it doubles from a batch that fits or halves towards one that does not."""
    lo, hi = _bracket(tried, max_batch)
    if hi == lo + 1:
        return None
    if hint is not None and hint not in tried and lo < hint < hi:
        return hint
    if hint in tried:
        # hint+1, hint+3, hint+7, ... while they fit; hint-1, hint-3, ... while they do not.
        guess = lo + (lo - hint) + 1 if tried[hint].fits else hi - (hint - hi) - 1
        return guess if lo < guess < hi else (lo + hi) // 2
    # The line is followed only after a batch that fit, below the limit: near the limit the
    # compiler trades recomputation for memory and the line bends, so after a refusal the
    # bracket is halved (else each guess past the bend is refused one row lower than the last);
    # and a fit whose memory analysis sums above the limit (it can: see the table's notes)
    # puts the line's next guess at one row more, every time.
    last = tried[list(tried)[-1]]
    fit = sorted(b for b, c in tried.items() if c.fits)
    follow = len(fit) >= 2 and last.fits and last.memory["peak_bytes"] < limit
    guess = _on_the_line(tried, fit, limit) if follow else None
    if guess is not None:
        guess = min(max(guess, lo + 1), hi - 1)
    if guess is None or guess in tried:
        guess = min(2 * lo, hi - 1) if hi > max_batch else (lo + hi) // 2
    return guess


def _on_the_line(tried: dict[int, Compiled], fit: list[int], limit: float) -> int | None:
    b0, b1 = fit[-2:]
    m0, m1 = (tried[b].memory["peak_bytes"] for b in (b0, b1))
    per_row = (m1 - m0) / (b1 - b0)
    return b1 + int((limit - m1) // per_row) if per_row > 0 else None


def largest_batch(
    compile_at: Any, target: Target, start: int = 8, max_batch: int = MAX_BATCH, hint: int | None = None
) -> tuple[int, dict[int, Compiled]]:
    """(the largest per-device batch that fits, up to `max_batch`; every compile of the search).
    `start` is compiled first (its memory is reported whatever the answer), then `hint`, if any."""
    tried: dict[int, Compiled] = {}
    batch: int | None = start
    while batch is not None:
        tried[batch] = compile_at(batch)
        batch = next_batch(tried, hbm_limit(list(tried.values()), target), max_batch, hint)
    fit = [b for b, c in tried.items() if c.fits]
    return max(fit, default=0), tried


def _bracket(tried: dict[int, Compiled], max_batch: int) -> tuple[int, int]:
    """(the largest batch that fit, or 0; the smallest that did not, or `max_batch` + 1)."""
    fit = [b for b, c in tried.items() if c.fits]
    over = [b for b, c in tried.items() if not c.fits]
    return max(fit, default=0), min([*over, max_batch + 1])
