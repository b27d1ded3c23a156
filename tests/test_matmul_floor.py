"""The matmul floor reads every matmul a step runs (forward, backward, inside scan) off its jaxpr."""

from __future__ import annotations

from collections import Counter

import jax
import jax.numpy as jnp
import pytest

from experiments.bench import matmul_floor as floor_lib
from experiments.bench.matmul_floor import Dot, count_dots, matmul_floor, step_dots
from train.loop.build import build_run
from train.observe.flops import step_flops

VOCAB = 67  # no other axis of the micro model has this size


def _step_dots(config):
    run = build_run(config, "/tmp/matmul_floor_unused", vocab_size=VOCAB)
    state = jax.eval_shape(run.init_state)
    B, L = config.batch_size, config.seq_len
    batch = {k: jax.ShapeDtypeStruct((B, L), jnp.int32) for k in ("tokens", "segment_ids", "positions")}
    return run, state, step_dots(run.train_step, state, batch)


@pytest.mark.parametrize("objective", ["clm", "mlm"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_the_step_s_matmuls_are_the_model_flops_less_its_vector_parameters(micro, objective, scan_layers):
    """train/observe/flops.py counts 6 FLOPs per parameter and token (plus attention and the head):
    the step's dot_generals carry exactly that, less the gains and biases, which are no matmul.
    Under scan the layer's dots are counted once per layer."""
    config = micro(objective, **{"model.position": "learned", "model.scan_layers": scan_layers})
    run, state, dots = _step_dots(config)
    # Gains and biases, counted on the unscanned layout (scan stacks them into matrices).
    unscanned = micro(objective, **{"model.position": "learned"})
    params = jax.eval_shape(build_run(unscanned, "/tmp/unused", vocab_size=VOCAB).init_state).params
    vectors = sum(p.size for p in jax.tree.leaves(params) if p.ndim < 2)
    tokens = config.batch_size * config.seq_len
    expected = step_flops(config, run.objective, state.params, VOCAB) - 6 * tokens * vectors
    assert sum(d.flops * n for d, n in dots.items()) == expected
    # Forward, input gradient and weight gradient of 4 projections + 2 MLP layers per layer,
    # 2 attention products and their 4 gradients per layer, and the head's 3.
    assert sum(dots.values()) == config.model.num_layers * (6 * 3 + 2 * 3) + 3


def test_remat_s_recomputed_forward_is_in_the_floor(micro):
    """Full remat runs the block's forward again in the backward pass (less what the gradient
    does not read, which JAX prunes): up to a third more block matmuls, none in the head."""
    _, _, plain = _step_dots(micro("clm", **{"model.position": "learned"}))
    _, _, remat = _step_dots(micro("clm", **{"model.position": "learned", "model.remat": "full"}))

    def flops(dots, head: bool) -> int:
        return sum(d.flops * n for d, n in dots.items() if (VOCAB in d.lhs + d.rhs) == head)

    assert flops(plain, head=False) < flops(remat, head=False) <= flops(plain, head=False) * 4 / 3
    assert flops(remat, head=True) == flops(plain, head=True)


def test_dot_flops_count_batch_free_and_contracted_axes():
    # [batch 2, 3, contract 5] x [batch 2, contract 5, 7] -> [2, 3, 7]: 2 x 3 x 7 x 5 multiply-adds
    dot = Dot((2, 3, 5), (2, 5, 7), "float32", "float32", (((2,), (1,)), ((0,), (0,))), "float32")
    assert dot.flops == 2 * (2 * 3 * 7 * 5)
    einsum = lambda a, b: jnp.einsum("bij,bjk->bik", a, b)  # noqa: E731
    jaxpr = jax.make_jaxpr(einsum)(jnp.ones((2, 3, 5)), jnp.ones((2, 5, 7)))
    assert dict(count_dots(jaxpr.jaxpr)) == {dot: 1}


def test_two_programs_timed_together_are_charged_alike_for_the_same_dot(monkeypatch):
    a = Dot((4, 8), (8, 2), "float32", "float32", (((1,), (0,)), ((), ())), "float32")
    b = Dot((4, 8), (4, 2), "float32", "float32", (((0,), (0,)), ((), ())), "float32")
    seconds = floor_lib.time_dots([a, b, a], repeats=2)
    assert set(seconds) == {a, b} and all(0 < t < 10 for t in seconds.values())
    first, second = matmul_floor(Counter({a: 3}), seconds), matmul_floor(Counter({a: 1, b: 2}), seconds)
    assert first["seconds"] == 3 * seconds[a] and second["seconds"] == seconds[a] + 2 * seconds[b]
    assert second["flops"] == a.flops + 2 * b.flops and second["dots"] == 3 and second["distinct"] == 2
    # Alone, each dot compiles once and runs once a round.
    compiles = []
    monkeypatch.setattr(floor_lib, "_alone", lambda dot: compiles.append(dot) or (lambda: None))
    assert set(floor_lib.time_dots([a, b, a], repeats=3)) == {a, b} and compiles == [a, b]
