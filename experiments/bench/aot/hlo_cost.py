"""What a compiled program costs, read from its HLO (experiments/bench/aot/hlo.py): the fused
attention kernels it calls, counted by their own formula; the bytes every kernel of it reads
and writes; and what its loops repeat.

XLA's cost analysis counts a custom kernel (a Pallas call) as no FLOPs and no bytes, counts a
`while` body once however many times it runs, and on GPU is not given at all. So the program is
read as the compiler left it: each instruction executed (those in a loop body once per
iteration) is a kernel launch, and

- a fused attention kernel (models/fused_attention.py's `KERNEL_CALLS`) costs what
  `kernel_cost` says for its operand shapes and block pattern (the scope its call was traced in);
- any other instruction moves its operands and its result through HBM once: what a fusion
  keeps on chip is not counted, a slice of a buffer moves only the slice, and an update made in
  place moves only the update. Layout, bitcast and tuple instructions move nothing.

This is the project's own estimate of the bytes (`io_bytes`); on TPU it is reported beside XLA's,
and what XLA leaves out of loops (`loop_repeats`: the iterations past the first, by this rule,
with the FLOPs of their matrix products) is added to XLA's counts.
"""

from __future__ import annotations

import dataclasses
import math
import re

from experiments.bench.aot.hlo import BYTES, Instruction, Module, attr, dims, executed, shape_bytes
from models.fused_attention import CAUSAL_SCOPE, KERNEL_CALLS, kernel_cost

_NO_TRAFFIC = {
    *("parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id"),
    *("replica-id", "opt-barrier", "add-dependency", "copy-done", "send-done", "recv-done"),
}
_NO_TRAFFIC |= {f"{c}-done" for c in ("all-gather", "all-reduce", "collective-permute", "all-to-all")}
_NO_TRAFFIC.add("async-done")
# Ops that read only part of an operand (inside a fusion: the part they produce is what moves).
_PARTIAL_READS = ("dynamic-slice", "slice", "gather")


def _kernel_call(ins: Instruction) -> str | None:
    """The fused kernel a custom call runs: named by its instruction (TPU) or the op name its
    metadata keeps (the GPU's `pallas_call.N`)."""
    if ins.op != "custom-call":
        return None
    op_name = re.search(r'op_name="([^"]*)"', ins.attrs)
    names = [ins.name, *(op_name.group(1).split("/")[-2:] if op_name else [])]
    return next((call for call in KERNEL_CALLS if any(n.startswith(call) for n in names)), None)


@dataclasses.dataclass
class KernelCount:
    """The fused attention kernels a program runs: calls, and FLOPs and bytes by their formula."""

    calls: int = 0
    flops: float = 0.0
    bytes: float = 0.0


def kernel_count(module: Module) -> KernelCount:
    count = KernelCount()
    for ins, times in executed(module):
        call = _kernel_call(ins)
        if call is None:
            continue
        flops, traffic = _kernel_cost_of(module, ins, call)
        count.calls += times
        count.flops += times * flops
        count.bytes += times * traffic
    return count


def _kernel_cost_of(module: Module, ins: Instruction, call: str) -> tuple[float, float]:
    """(FLOPs, bytes) of one call of a fused kernel, from its q and k operands' shapes."""
    impl = KERNEL_CALLS[call][0]
    q, k = [module.shapes[o] for o in ins.operands if len(dims(module.shapes.get(o, ""))) == 4][:2]
    (B, a, b, H), S = dims(q), dims(k)[2 if impl == "splash" else 1]
    N, T = (a, b) if impl == "splash" else (b, a)  # splash: [B, N, T, H]; the GPU's [B, T, N, H]
    itemsize = BYTES[q.split("[")[0].strip("(")]
    return kernel_cost(call, B, N, T, S, H, itemsize, CAUSAL_SCOPE in ins.attrs)


def io_bytes(module: Module) -> float:
    """Bytes every instruction but the fused attention kernels reads and writes (module docstring)."""
    total = 0.0
    for ins, times in executed(module):
        if ins.op in _NO_TRAFFIC or _kernel_call(ins) is not None:
            continue
        total += times * _instruction_bytes(module, ins)
    return total


def largest_ops(module: Module, n: int) -> list[dict[str, object]]:
    """The `n` instructions that move the most bytes (`io_bytes`' rule, the kernels by formula),
    each with the JAX operation it came from (its metadata's op name): where the bytes go."""
    rows = []
    for ins, times in executed(module):
        if ins.op in _NO_TRAFFIC:
            continue
        call = _kernel_call(ins)
        each = _kernel_cost_of(module, ins, call)[1] if call else _instruction_bytes(module, ins)
        op_name = re.search(r'op_name="([^"]*)"', ins.attrs)
        rows.append(
            {
                "op": op_name.group(1) if op_name else ins.name,
                "kind": ins.op,
                "times": times,
                "bytes": times * each,
            }
        )
    return sorted(rows, key=lambda r: -r["bytes"])[:n]


def _instruction_bytes(module: Module, ins: Instruction) -> float:
    operands = module.operand_bytes(ins)
    if ins.op in _PARTIAL_READS:
        return 2 * shape_bytes(ins.shape)
    if ins.op == "dynamic-update-slice":
        return 2 * operands[1]
    if ins.op == "fusion":
        return _fusion_bytes(module, ins, operands)
    return sum(operands) + shape_bytes(ins.shape)


def _fusion_bytes(module: Module, ins: Instruction, operands: list[int]) -> float:
    """A fusion's operands and result, less what it only slices or updates in place."""
    body = module.computations.get(attr(ins, "calls") or "", [])
    params = {i.name: int(i.args) for i in body if i.op == "parameter"}
    users: dict[str, list[Instruction]] = {}
    for i in body:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    total = float(shape_bytes(ins.shape))
    for name, index in params.items():
        uses = users.get(name, [])
        if index >= len(operands):
            continue
        if uses and all(u.op in _PARTIAL_READS and u.operands[0] == name for u in uses):
            total += sum(shape_bytes(u.shape) for u in uses)
        elif uses and all(u.op == "dynamic-update-slice" and u.operands[0] == name for u in uses):
            # Updated in place: the result aliases it; only the updates move.
            update = sum(shape_bytes(module.shapes.get(u.operands[1], "")) for u in uses)
            total += update - sum(shape_bytes(u.shape) for u in uses)
        else:
            total += operands[index]
    return max(total, 0.0)


@dataclasses.dataclass
class Repeats:
    """What XLA's cost analysis leaves out of a program with loops: it counts a `while` body once,
    however many times it runs (a chunked loss's scan, scanned layers, accumulated gradients).
    The FLOPs of its matrix products and its bytes (`io_bytes`' rule) over the iterations past
    the first."""

    flops: float = 0.0
    bytes: float = 0.0


def loop_repeats(module: Module) -> Repeats:
    out = Repeats()
    for ins, times in executed(module):
        if times > 1 and ins.op not in _NO_TRAFFIC and _kernel_call(ins) is None:
            out.flops += (times - 1) * dot_flops(module, ins)
            out.bytes += (times - 1) * _instruction_bytes(module, ins)
    return out


def dot_flops(module: Module, ins: Instruction) -> float:
    """2 x (result elements) x (contracted elements) of a matrix product: a `dot`, a `convolution`
    without a window (how the TPU compiler writes a dot: the lhs's `f` dimensions contracted),
    or those a fusion holds."""
    if ins.op == "fusion":
        return sum(dot_flops(module, i) for i in module.computations.get(attr(ins, "calls") or "", []))
    lhs = dims(module.shapes.get(ins.operands[0], "")) if ins.operands else []
    if ins.op == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
        contracted = [lhs[int(d)] for d in contracting.group(1).split(",") if d] if contracting else []
    elif ins.op == "convolution":
        labels = re.search(r"dim_labels=(\w+)_", ins.attrs)
        contracted = [
            n for n, label in zip(lhs, labels.group(1) if labels else "", strict=False) if label == "f"
        ]
    else:
        return 0.0
    return 2.0 * math.prod(dims(ins.shape)) * math.prod(contracted)
