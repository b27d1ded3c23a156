"""What a compiled program costs, read from its HLO text: the fused attention kernels it calls,
counted by their own formula, and the bytes every kernel of it reads and writes.

XLA's cost analysis counts a custom kernel (a Pallas call) as no FLOPs and no bytes, and the
GPU compiler gives no cost analysis at all. So the program is read as the compiler left it:
each instruction executed (those in a `while` body once per iteration, by the trip count the
compiler knows) is a kernel launch, and

- a fused attention kernel (models/fused_attention.py's `KERNEL_CALLS`) costs what
  `kernel_cost` says for its operand shapes and block pattern (the scope its call was traced in);
- any other instruction moves its operands and its result through HBM once: what a fusion
  keeps on chip is not counted, a slice of a buffer moves only the slice, and an update made in
  place moves only the update. Layout, bitcast and tuple instructions move nothing.

This is the project's own estimate of the bytes (`io_bytes`); on TPU it is reported beside XLA's.
"""

from __future__ import annotations

import dataclasses
import math
import re

from models.fused_attention import CAUSAL_SCOPE, KERNEL_CALLS, kernel_cost

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4}
_BYTES.update({"s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1})
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_NO_TRAFFIC = {
    *("parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id"),
    *("replica-id", "opt-barrier", "add-dependency", "copy-done", "send-done", "recv-done"),
}
_NO_TRAFFIC |= {
    f"{c}-done" for c in ("all-gather", "all-reduce", "collective-permute", "all-to-all", "async")
}


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    op: str
    operands: list[str]
    args: str  # the text between the parentheses: operands, or a parameter's index
    attrs: str


def _closing(text: str, start: int) -> int:
    """The index of the parenthesis that closes the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text) - 1


def _instruction(line: str) -> Instruction | None:
    line = line.strip().removeprefix("ROOT ")
    if not line.startswith("%") or " = " not in line:
        return None
    name, rest = line[1:].split(" = ", 1)
    shape_end = _closing(rest, 0) + 1 if rest.startswith("(") else rest.index(" ")
    shape, rest = rest[:shape_end], rest[shape_end:].lstrip()
    op_end = rest.find("(")
    if op_end < 0:
        return None
    args_end = _closing(rest, op_end)
    args = rest[op_end + 1 : args_end]
    return Instruction(
        name, shape, rest[:op_end], re.findall(r"%([\w.\-]+)", args), args, rest[args_end + 1 :]
    )


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape (a tuple's elements summed; layouts ignored)."""
    return sum(
        _BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d)
        for t, dims in _ARRAY.findall(shape)
    )


@dataclasses.dataclass
class Module:
    computations: dict[str, list[Instruction]]
    entry: str
    shapes: dict[str, str]  # instruction name -> its shape, over every computation

    def operand_bytes(self, ins: Instruction) -> list[int]:
        return [shape_bytes(self.shapes.get(o, "")) for o in ins.operands]


def parse(text: str) -> Module:
    """The computations of a compiled module's HLO text (`Compiled.as_text()`). An instruction
    may run over several lines (a kernel's metadata): those lines join its attributes."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(1), [])
            entry = header.group(1) if line.startswith("ENTRY") else entry
        elif line == "}":
            current = None
        elif current is not None and (ins := _instruction(line)) is not None:
            current.append(ins)
        elif current:
            current[-1].attrs += line
    shapes = {i.name: i.shape for body in computations.values() for i in body}
    return Module(computations, entry, shapes)


def _attr(ins: Instruction, key: str) -> str | None:
    found = re.search(rf"\b{key}=%([\w.\-]+)", ins.attrs)
    return found.group(1) if found else None


def executed(module: Module) -> list[tuple[Instruction, int]]:
    """Every instruction the program runs and how many times: the entry's, and those of each
    `while` body (times its trip count; once where the compiler does not know it) and `call`."""
    out: list[tuple[Instruction, int]] = []

    def walk(name: str, times: int) -> None:
        for ins in module.computations.get(name, []):
            if ins.op == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
                n = times * (int(trips.group(1)) if trips else 1)
                walk(_attr(ins, "body") or "", n)
                walk(_attr(ins, "condition") or "", n)
            elif ins.op in ("call", "async-start") and _attr(ins, "calls"):
                walk(_attr(ins, "calls") or "", times)
            else:
                out.append((ins, times))

    walk(module.entry, 1)
    return out


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
        impl = KERNEL_CALLS[call][0]
        q, k = [module.shapes[o] for o in ins.operands if len(_dims(module.shapes.get(o, ""))) == 4][:2]
        (B, a, b, H), S = _dims(q), _dims(k)[2 if impl == "splash" else 1]
        N, T = (a, b) if impl == "splash" else (b, a)  # splash: [B, N, T, H]; the GPU's [B, T, N, H]
        flops, traffic = kernel_cost(
            call, B, N, T, S, H, _BYTES[_ARRAY.search(q).group(1)], CAUSAL_SCOPE in ins.attrs
        )
        count.calls += times
        count.flops += times * flops
        count.bytes += times * traffic
    return count


def _dims(shape: str) -> list[int]:
    found = _ARRAY.search(shape)
    return [int(d) for d in found.group(2).split(",") if d] if found else []


def io_bytes(module: Module) -> float:
    """Bytes every instruction but the fused attention kernels reads and writes (module docstring)."""
    total = 0.0
    for ins, times in executed(module):
        if ins.op in _NO_TRAFFIC or _kernel_call(ins) is not None:
            continue
        total += times * _instruction_bytes(module, ins)
    return total


def _instruction_bytes(module: Module, ins: Instruction) -> float:
    operands = module.operand_bytes(ins)
    if ins.op == "dynamic-slice":
        return 2 * shape_bytes(ins.shape)
    if ins.op == "dynamic-update-slice":
        return 2 * operands[1]
    if ins.op == "fusion":
        return _fusion_bytes(module, ins, operands)
    return sum(operands) + shape_bytes(ins.shape)


def _fusion_bytes(module: Module, ins: Instruction, operands: list[int]) -> float:
    """A fusion's operands and result, less what it only slices or updates in place."""
    body = module.computations.get(_attr(ins, "calls") or "", [])
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
        if uses and all(u.op == "dynamic-slice" and u.operands[0] == name for u in uses):
            total += sum(shape_bytes(u.shape) for u in uses)
        elif uses and all(u.op == "dynamic-update-slice" and u.operands[0] == name for u in uses):
            # Updated in place: the result aliases it; only the updates move.
            update = sum(shape_bytes(module.shapes.get(u.operands[1], "")) for u in uses)
            total += update - sum(shape_bytes(u.shape) for u in uses)
        else:
            total += operands[index]
    return max(total, 0.0)
