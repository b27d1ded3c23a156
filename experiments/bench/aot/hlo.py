"""A compiled program's HLO text read back: its computations, instructions and shapes, and which
instructions run how many times (those in a `while` body once per iteration, by the trip count
the compiler knows). experiments/bench/aot/hlo_cost.py counts what they cost."""

from __future__ import annotations

import dataclasses
import math
import re

BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4}
BYTES.update({"s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1})
ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")
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
        BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d) for t, dims in ARRAY.findall(shape)
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


def attr(ins: Instruction, key: str) -> str | None:
    found = re.search(rf"\b{key}=%([\w.\-]+)", ins.attrs)
    return found.group(1) if found else None


def trip_count(module: Module, loop: Instruction) -> int:
    """How many times a `while` runs: what the compiler noted (GPU), else the bound its condition
    compares a counter from 0 against (`i < N`, as a scan's loop reads on TPU); 1 if neither."""
    noted = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.attrs)
    if noted:
        return int(noted.group(1))
    condition = module.computations.get(attr(loop, "condition") or "", [])
    constants = {i.name: i.args for i in condition if i.op == "constant"}
    for ins in condition:
        if ins.op == "compare" and "direction=LT" in ins.attrs and ins.operands[-1] in constants:
            bound = constants[ins.operands[-1]]
            return int(bound) if bound.isdigit() else 1
    return 1


def executed(module: Module) -> list[tuple[Instruction, int]]:
    """Every instruction the program runs and how many times: the entry's, and those of each
    `while` body (times its trip count) and `call`."""
    out: list[tuple[Instruction, int]] = []

    def walk(name: str, times: int) -> None:
        for ins in module.computations.get(name, []):
            if ins.op == "while":
                n = times * trip_count(module, ins)
                walk(attr(ins, "body") or "", n)
                walk(attr(ins, "condition") or "", n)
            elif ins.op in ("call", "async-start") and attr(ins, "calls"):
                walk(attr(ins, "calls") or "", times)
            else:
                out.append((ins, times))

    walk(module.entry, 1)
    return out


def dims(shape: str) -> list[int]:
    """The dimensions of a shape's first array."""
    found = ARRAY.search(shape)
    return [int(d) for d in found.group(2).split(",") if d] if found else []
