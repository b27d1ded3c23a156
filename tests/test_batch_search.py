"""The search for the largest per-device batch that fits (experiments/bench/aot/batch_search.py),
against compiles made up so that the answer is known: memory that grows by a set amount a row,
bends near the limit, or sums above it; with and without a hint."""

from __future__ import annotations

import pytest

from experiments.bench.aot.batch_search import hbm_limit, largest_batch
from experiments.bench.aot.compile import Compiled
from experiments.bench.aot.table import sibling_hint
from experiments.bench.aot.targets import Target
from train.devices.chips import CHIPS

V5E = Target("v5e:2x2", "tpu", CHIPS["TPU v5 lite"], [], None)
V4 = Target("v4:2x2x1", "tpu", CHIPS["TPU v4"], [], None)
OOM = "RESOURCE_EXHAUSTED: Ran out of memory on HBM, ... temporaries (26.92G) exceeds available HBM (15.75G)."


def _fake_compiles(per_row: float, fixed: float = 6.5e9, limit: float = 15.75 * 2**30, bend: float = 0.0):
    """Compiles whose peak grows by `per_row` a row (more steeply with `bend`) and that the
    compiler refuses past `limit`, as libtpu does; counts how many were asked for."""
    asked = []

    def compile_at(batch: int) -> Compiled:
        asked.append(batch)
        peak = fixed + per_row * batch + bend * batch**2
        if peak > limit:
            return Compiled(batch, False, 9.0, {}, 0.0, 0.0, OOM)
        return Compiled(batch, True, 45.0, {"peak_bytes": int(peak)}, 1.0, 1.0)

    return compile_at, asked


@pytest.mark.parametrize("per_row,bend", [(0.63e9, 0), (1e8, 0), (2e9, 0), (1e7, 0), (1e8, 2e6), (2e10, 0)])
def test_the_search_ends_on_a_batch_that_fits_and_one_more_that_does_not(per_row, bend):
    compile_at, asked = _fake_compiles(per_row, bend=bend)
    largest, tried = largest_batch(compile_at, V5E)
    assert sorted(tried) == sorted(asked) and len(asked) == len(set(asked))
    if largest:
        assert tried[largest].fits and not tried[largest + 1].fits
    else:
        assert not tried[1].fits  # not even one row
    truth = max((b for b in range(1, 5000) if compile_at(b).fits), default=0)
    assert largest == truth
    if bend == 0 and largest > 8:  # memory linear in the batch: the line finds it at once
        assert len(tried) <= 6


def test_the_search_stops_at_its_cap():
    compile_at, _ = _fake_compiles(1e3)
    largest, tried = largest_batch(compile_at, V5E, max_batch=64)
    assert largest == 64 and max(tried) == 64


def test_a_line_that_bends_near_the_limit_still_ends_in_few_compiles():
    """Near the limit the compiler recomputes to fit, so memory stops growing with the batch and
    then jumps: a line through two fits keeps pointing past the last refusal."""

    def compile_at(batch: int) -> Compiled:
        if batch > 65:
            return Compiled(batch, False, 9.0, {}, 0.0, 0.0, OOM)
        peak = 1.4e9 + 0.5e9 * min(batch, 40) + 0.01e9 * max(batch - 40, 0)  # flat from 40 rows
        return Compiled(batch, True, 45.0, {"peak_bytes": int(peak)}, 1.0, 1.0)

    largest, tried = largest_batch(compile_at, V4)
    assert largest == 65 and len(tried) <= 12


def test_fits_whose_memory_sums_above_the_limit_are_bisected_not_crept_along():
    """The compiler accepts steps whose memory analysis sums above its limit (GPT-2 on v5e: 16.18
    GiB accepted against 15.75): a line through such fits points at one row more each time."""

    def compile_at(batch: int) -> Compiled:
        if batch > 200:
            return Compiled(batch, False, 9.0, {}, 0.0, 0.0, OOM)
        return Compiled(batch, True, 45.0, {"peak_bytes": int(1e9 + 0.1e9 * batch)}, 1.0, 1.0)

    largest, tried = largest_batch(compile_at, V5E)
    assert largest == 200 and len(tried) <= 14, sorted(tried)  # 8, 16, the line, then halving


@pytest.mark.parametrize("per_row", [0.63e9, 1e8, 2e9, 1e7, 2e10])
@pytest.mark.parametrize("offset", [-171, -13, -2, -1, 0, 1, 2, 7, 49])
def test_from_a_hint_the_search_finds_the_same_batch_and_few_compiles_near_it(per_row, offset):
    compile_at, asked = _fake_compiles(per_row)
    truth, _ = largest_batch(compile_at, V5E)
    hint = max(truth + offset, 1)
    asked.clear()
    largest, tried = largest_batch(compile_at, V5E, hint=hint)
    assert largest == truth and len(asked) == len(set(asked)) and asked[0] == 8
    assert (truth == 0 and not tried[1].fits) or (tried[truth].fits and not tried[truth + 1].fits)
    if truth > 8 and abs(offset) <= 2:  # the start, the hint, then steps of 1 and 2 rows
        assert asked[1] == hint and len(asked) <= 5, asked


def test_the_limit_is_the_targets_where_it_sets_one_else_the_tpu_compilers_or_the_data_sheets():
    refused = Compiled(64, False, 9.0, {}, 0.0, 0.0, OOM)
    assert hbm_limit([refused], V5E) == 15.75 * 2**30
    assert hbm_limit([], V5E) == CHIPS["TPU v5 lite"].hbm_bytes
    h100 = Target("h100", "gpu", CHIPS["H100"], [], 0.75 * CHIPS["H100"].hbm_bytes)
    assert hbm_limit([refused], h100) == 60e9


def test_the_hint_is_the_same_model_slice_remat_and_step_with_the_state_sharded_the_other_way():
    row = {"model": "gpt2", "topology": "v4:2x2x1", "fsdp": "1", "remat": "dots", "step": "fused"}
    row["largest_batch"] = "65"
    rows = [
        row,
        {**row, "remat": "none", "largest_batch": "63"},
        {**row, "step": "materialised", "fsdp": "4", "largest_batch": "50"},
        {**row, "model": "small", "largest_batch": "9"},
    ]
    assert sibling_hint(rows, "gpt2", "v4:2x2x1", True, "dots", "fused") == 65
    assert sibling_hint(rows, "gpt2", "v4:2x2x1", False, "dots", "fused") is None  # the row itself
    assert sibling_hint(rows, "gpt2", "v4:2x2x1", False, "dots", "materialised") == 50
    assert sibling_hint(rows, "bert_base", "v4:2x2x1", True, "dots", "fused") is None
    assert sibling_hint([{**row, "largest_batch": "0"}], "gpt2", "v4:2x2x1", True, "dots", "fused") is None
