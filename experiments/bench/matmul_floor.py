"""The matmul floor of a jitted step: every `dot_general` it runs, each timed alone at its shape.

A step's matmuls are read off its jaxpr (forward and backward, inside `jit`, `remat`, custom
derivatives and `scan`, counted once per iteration), each distinct one (shapes, dtypes,
dimension numbers) is compiled alone and timed (the best of `repeats` rounds over all of them),
and the floor is the sum over every occurrence. It is what the step would take if nothing but
its matmuls ran, one after the other, each as fast as XLA runs it in isolation: a step can beat
it only by running matmuls faster than that (a better layout, or overlapping them), never by
trimming the ops around them.
`python -m experiments.bench ... --baseline hf --matmul_floor` reports it for our step and Hugging
Face's, and so the most our step can be ahead of HF's at the same matmuls (HF's step time over
our floor).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore


@dataclasses.dataclass(frozen=True)
class Dot:
    """One distinct `dot_general`: operand shapes and dtypes, dimension numbers, result dtype."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    lhs_dtype: str
    rhs_dtype: str
    dimension_numbers: tuple
    out_dtype: str

    @property
    def flops(self) -> int:
        """2 x every multiply-add: 2 x the result's elements x the contracted size."""
        (lhs_contract, _), (lhs_batch, _) = self.dimension_numbers
        shared = math.prod(self.lhs[i] for i in (*lhs_contract, *lhs_batch))
        # batch x lhs-free x rhs-free x contracted = |lhs| x |rhs| / (batch x contracted)
        return 2 * math.prod(self.lhs) * math.prod(self.rhs) // shared


def _sub_jaxprs(eqn: Any) -> Iterator[tuple[Any, int]]:
    """The jaxprs inside an equation, with how many times each runs per run of the equation."""
    times = int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, jcore.ClosedJaxpr):
                yield v.jaxpr, times
            elif isinstance(v, jcore.Jaxpr):
                yield v, times


def count_dots(jaxpr: Any, times: int = 1, counts: Counter | None = None) -> Counter:
    """{Dot: how many times the program runs it}, over `jaxpr` and every jaxpr inside it."""
    counts = Counter() if counts is None else counts
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            pairs = eqn.params["dimension_numbers"]
            dims = tuple(tuple(tuple(int(i) for i in side) for side in pair) for pair in pairs)
            out = eqn.outvars[0].aval.dtype
            counts[Dot(lhs.shape, rhs.shape, str(lhs.dtype), str(rhs.dtype), dims, str(out))] += times
        for sub, n in _sub_jaxprs(eqn):
            count_dots(sub, times * n, counts)
    return counts


def step_dots(fn: Callable, *args: Any) -> Counter:
    """The dots one call of `fn(*args)` runs (traced, not run)."""
    return count_dots(jax.make_jaxpr(fn)(*args).jaxpr)


def _operand(key: jax.Array, shape: tuple[int, ...], dtype: str) -> jax.Array:
    if jnp.issubdtype(dtype, jnp.inexact):
        return jax.random.normal(key, shape, dtype)
    return jnp.ones(shape, dtype)  # integer dots (HF's BERT has one)


def _alone(dot: Dot) -> Callable[[], Any]:
    """`dot` compiled alone on random operands, run once: a call that runs it again."""
    dims, out_dtype = dot.dimension_numbers, jnp.dtype(dot.out_dtype)
    keys = jax.random.split(jax.random.PRNGKey(0))
    a = _operand(keys[0], dot.lhs, dot.lhs_dtype)
    b = _operand(keys[1], dot.rhs, dot.rhs_dtype)
    f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=out_dtype))
    compiled = f.lower(a, b).compile()
    compiled(a, b).block_until_ready()
    return lambda: compiled(a, b).block_until_ready()


def time_dots(dots: Iterable[Dot], repeats: int = 10) -> dict[Dot, float]:
    """Seconds of each dot compiled alone: the best of `repeats` rounds that run every dot once
    in turn, so a machine that slows down for a while slows every dot alike."""
    calls = {dot: _alone(dot) for dot in dict.fromkeys(dots)}
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for dot, call in calls.items():
            t0 = time.perf_counter()
            call()
            best[dot] = min(best[dot], time.perf_counter() - t0)
    return best


def matmul_floor(
    counts: Counter, seconds: dict[Dot, float] | None = None, repeats: int = 10
) -> dict[str, Any]:
    """The floor of a program that runs `counts` (from `step_dots`): seconds, FLOPs, and per
    distinct dot its count, seconds and GFLOP/s, the largest share first. `seconds` (from
    `time_dots`) may hold every dot of two programs timed together, so that the same dot is
    charged alike and their floors differ only where their dots do; else they are timed here."""
    seconds = time_dots(counts, repeats) if seconds is None else seconds
    rows = []
    for dot, n in counts.items():
        rows.append(
            {
                "lhs": list(dot.lhs),
                "rhs": list(dot.rhs),
                "contract": [list(d) for d in dot.dimension_numbers[0]],
                "batch": [list(d) for d in dot.dimension_numbers[1]],
                "count": n,
                "seconds_each": seconds[dot],
                "gflops_per_sec": dot.flops / seconds[dot] / 1e9,
            }
        )
    rows.sort(key=lambda r: -r["count"] * r["seconds_each"])
    return {
        "seconds": sum(r["count"] * r["seconds_each"] for r in rows),
        "flops": float(sum(dot.flops * n for dot, n in counts.items())),
        "dots": sum(counts.values()),
        "distinct": len(counts),
        "by_dot": rows,
    }
