"""A compiled program's cost read from its HLO (experiments/bench/aot/hlo_cost.py) on a module
written out here, whose every count is known: loops by their trip count, in-place updates by
the update, fused kernels by their formula (models/fused_attention.py `kernel_cost`)."""

from __future__ import annotations

import pytest

from experiments.bench.aot import hlo, hlo_cost
from models.fused_attention import kernel_cost, visited_fraction

MODULE = """HloModule jit_step, is_scheduled=true

%product (a.1: f32[4,8], b.1: f32[8,8]) -> f32[4,8] {
  %a.1 = f32[4,8]{1,0} parameter(0)
  %b.1 = f32[8,8]{1,0} parameter(1)
  ROOT %conv = f32[4,8]{1,0} convolution(%a.1, %b.1), dim_labels=bf_io->bf
}

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %y = f32[4,8]{1,0} multiply(%x, %x), metadata={op_name="jit(step)/mul"}
  %w = f32[8,8]{1,0} constant({...})
  %z = f32[4,8]{1,0} fusion(%y, %w), kind=kOutput, calls=%product
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %z)
}

%cond (p.1: (s32[], f32[4,8])) -> pred[] {
  %p.1 = (s32[], f32[4,8]{1,0}) parameter(0)
  %bound = s32[] constant(5)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  ROOT %lt = pred[] compare(%i.1, %bound), direction=LT
}

%fused_dus (param_0: f32[64,8], param_1: f32[1,8], param_2: s32[]) -> f32[64,8] {
  %param_0 = f32[64,8]{1,0} parameter(0)
  %param_1 = f32[1,8]{1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %zero = s32[] constant(0)
  ROOT %dus = f32[64,8]{1,0} dynamic-update-slice(%param_0, %param_1, %param_2, %zero)
}

ENTRY %main (a: f32[4,8], buf: f32[64,8], row: f32[1,8], n: s32[], q: bf16[2,4,256,64]) -> f32[64,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %buf = f32[64,8]{1,0} parameter(1)
  %row = f32[1,8]{1,0} parameter(2)
  %n = s32[] parameter(3)
  %q = bf16[2,4,256,64]{3,2,1,0} parameter(4)
  %init = (s32[], f32[4,8]{1,0}) tuple(%n, %a)
  %loop = (s32[], f32[4,8]{1,0}) while(%init), condition=%cond, body=%body
  %splash_mha_fwd_segmented_residuals.3 = (bf16[2,4,256,64]{3,2,1,0}, f32[2,4,256]{2,1,0}) custom-call(%q, %q, %q), custom_call_target="tpu_custom_call", frontend_attributes={kernel_metadata={
"xprof_metadata":"{}"
}}, metadata={op_name="jit(step)/fused_attention_causal/shard_map/splash_mha_fwd_segmented_residuals/pallas_call"}
  ROOT %updated = f32[64,8]{1,0} fusion(%buf, %row, %n), kind=kLoop, calls=%fused_dus
}
"""  # noqa: E501  (HLO as the compiler prints it, one instruction a line)


# As the GPU compiler writes a loop: the trip count noted, the condition not read.
NOTED = MODULE.replace(
    "while(%init), condition=%cond, body=%body",
    'while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}',
).replace("%bound = s32[] constant(5)", "%bound = s32[] constant(-1)")


@pytest.mark.parametrize("text", [MODULE, NOTED], ids=["bound-in-condition", "noted"])
def test_a_loop_body_counts_once_per_iteration_and_an_update_in_place_only_the_update(text):
    module = hlo.parse(text)
    assert module.entry == "main" and set(module.computations) == {
        "product",
        "body",
        "cond",
        "fused_dus",
        "main",
    }
    ran = {ins.name: times for ins, times in hlo.executed(module)}
    assert ran["y"] == ran["z"] == 5 and ran["updated"] == 1 and "loop" not in ran
    multiply = 3 * 4 * 8 * 4  # two operands and the result, f32[4,8]
    product = (2 * 4 * 8 + 8 * 8) * 4  # its operands and result
    compare = 4 + 4 + 1  # the condition's counter and bound, its answer
    update = (8 + 8) * 4 + 4  # the row read and written into the buffer, the index read
    assert hlo_cost.io_bytes(module) == 5 * (multiply + product + compare) + update
    # What XLA's cost analysis, which counts a loop body once, leaves out: four iterations.
    repeats = hlo_cost.loop_repeats(module)
    assert repeats.flops == 4 * 2 * (4 * 8) * 8 and repeats.bytes == 4 * (multiply + product + compare)


def test_a_fused_kernel_is_counted_by_its_formula_with_the_block_pattern_of_its_scope():
    module = hlo.parse(MODULE)
    count = hlo_cost.kernel_count(module)
    # q [B, N, T, H] = [2, 4, 256, 64] in bf16; one block of 256 queries and keys.
    flops, traffic = kernel_cost("splash_mha_fwd", 2, 4, 256, 256, 64, 2, causal=True)
    assert (count.calls, count.flops, count.bytes) == (1, flops, traffic)
    assert flops == 2 * 2 * (2 * 4 * 256 * 256 * 64)  # QK^T and PV, the one block computed whole
    # Where the bytes go: the kernel first, named by the JAX operation it came from.
    top = hlo_cost.largest_ops(module, 2)
    assert top[0]["kind"] == "custom-call" and top[0]["bytes"] == traffic and "splash_mha_fwd" in top[0]["op"]
    assert top[1] == {
        "op": "z",
        "kind": "fusion",
        "times": 5,
        "bytes": 5 * (2 * 4 * 8 + 8 * 8) * 4,
    }  # no op name


def test_a_causal_pattern_visits_the_blocks_on_and_below_the_diagonal():
    assert visited_fraction(1024, 1024, 512, 512, causal=True) == 3 / 4
    assert visited_fraction(1024, 1024, 128, 128, causal=True) == 9 / 16
    assert visited_fraction(1024, 1024, 128, 32, causal=True) == pytest.approx((8 * 4 + 8 * 7 * 4 / 2) / 256)
    assert visited_fraction(512, 512, 128, 128, causal=False) == 1.0
    full, _ = kernel_cost("splash_mha_dkv", 1, 1, 1024, 1024, 64, 2, causal=False)
    causal, _ = kernel_cost("splash_mha_dkv", 1, 1, 1024, 1024, 64, 2, causal=True)
    assert causal / full == 3 / 4 and full == 4 * 2 * 1024 * 1024 * 64
