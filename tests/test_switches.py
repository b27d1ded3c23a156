"""Execution switches that must not change what is computed: remat, gradient accumulation,
mixed precision; and the memory check before training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.bench.matmul_floor import count_dots
from models import registry
from models.errors import ConfigError
from models.layer_scan import stack_layer_params
from models.masks import make_attention_mask
from models.transformer_config import attention_impl_for
from train.config_checks import validate
from train.data.sources import make_source
from train.devices.memory import check_fits, step_memory
from train.loop import step as step_lib
from train.loop.trainer import train_and_evaluate
from train.objectives import make_objective


def _setup(micro, tmp_path, objective="clm", adam=False, **overrides):
    # One block: every switch compared here acts within a block or around the whole step.
    config = micro(objective, **{"optim.warmup_steps": 0, "model.num_layers": 1, **overrides})
    source = make_source(config, str(tmp_path))
    cfg = registry.model_config(config, source.vocab_size)
    # Plain SGD with rate 1: the update is minus the gradient, so comparing parameters after
    # one step compares gradients (Adam's first step, ~lr * sign(g), would amplify float noise).
    tx = step_lib.make_optimizer(config) if adam else optax.sgd(1.0)
    graphdef, _ = step_lib.abstract_model(cfg)
    state = jax.jit(lambda: step_lib.init_state(cfg, tx, 0))()
    batch = next(source.train_iterator())
    obj = make_objective(config, source.vocab_size)

    def step(accum=1):
        fn = step_lib.make_train_step(graphdef, tx, obj, config.mask, step_lib.make_schedule(config), accum)
        return jax.jit(fn)(state, batch)

    return step


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["clm", "mlm", "hybrid"])
def test_gradient_accumulation_equals_the_full_batch(objective, micro, tmp_path):
    step = _setup(micro, tmp_path, objective)
    full_state, full = step(1)
    for accum in (2, 4):
        state, metrics = step(accum)
        assert float(metrics["loss"]) == pytest.approx(float(full["loss"]), rel=1e-5)
        assert float(metrics["predicted_tokens"]) == float(full["predicted_tokens"])
        assert float(metrics["grad_norm"]) == pytest.approx(float(full["grad_norm"]), rel=1e-5)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(full_state.params), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_nothing_but_memory(remat, micro, tmp_path):
    ref_state, ref = _setup(micro, tmp_path)(1)
    state, metrics = _setup(micro, tmp_path, **{"model.remat": remat})(1)
    assert float(metrics["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(float(ref["grad_norm"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides", [{}, {"model.remat": "full"}, {"model.norm": "batchnorm"}, {"model.norm_position": "post"}]
)
def test_scan_over_layers_computes_the_same_loss_gradients_and_statistics(overrides, micro, tmp_path):
    config = micro("clm", **{"optim.warmup_steps": 0, **overrides})
    source = make_source(config, str(tmp_path))
    objective = make_objective(config, source.vocab_size)
    batch = objective.transform(next(source.train_iterator()), jax.random.PRNGKey(0))
    loop_cfg = registry.model_config(config, source.vocab_size)
    scan_cfg = dataclasses.replace(loop_cfg, scan_layers=True)
    # The looped model's parameters, stacked into the scanned layout: the same function.
    graphdef, params, rest = step_lib.split_model(registry.make_model(loop_cfg, nnx.Rngs(0)))
    scan_graphdef, _, _ = step_lib.split_model(registry.make_model(scan_cfg, nnx.Rngs(0)))

    def loss(graphdef, params, rest):
        model = nnx.merge(graphdef, params, rest)
        return objective.scores(model, batch, config.mask)["nll_sum"], step_lib.split_model(model)[2]

    (ref, ref_rest), ref_grads = jax.value_and_grad(lambda p: loss(graphdef, p, rest), has_aux=True)(params)
    scan_params, scan_rest = stack_layer_params(params), stack_layer_params(rest)
    (got, got_rest), got_grads = jax.value_and_grad(
        lambda p: loss(scan_graphdef, p, scan_rest), has_aux=True
    )(scan_params)
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    expected = stack_layer_params(ref_grads)
    assert jax.tree.structure(got_grads) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)  # gradients of a sum over ~250 tokens
    # BatchNorm's running statistics come out of the scan, stacked.
    for a, b in zip(jax.tree.leaves(got_rest), jax.tree.leaves(stack_layer_params(ref_rest)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert jax.tree.structure(got_rest) == jax.tree.structure(stack_layer_params(ref_rest))
    if jax.tree.leaves(scan_rest):  # and they moved: the scan's statistics were written back
        assert any(
            not np.allclose(a, b)
            for a, b in zip(jax.tree.leaves(got_rest), jax.tree.leaves(scan_rest), strict=True)
        )


@pytest.mark.slow
def test_a_scanned_run_refuses_a_looped_runs_checkpoint(micro, tmp_path):
    from train.checkpoint.restore import CheckpointMismatch

    train_and_evaluate(
        micro("clm", num_train_steps=10, checkpoint_every_steps=10, log_every_steps=5), str(tmp_path)
    )
    scanned = micro("clm", num_train_steps=20, checkpoint_every_steps=10, log_every_steps=5)
    scanned.model.scan_layers = True
    with pytest.raises(CheckpointMismatch, match="scan_layers"):
        train_and_evaluate(scanned, str(tmp_path))


IMPLS = ("auto", "einsum", "xla")


def test_auto_attention_is_written_out_on_cpu_and_a_fused_kernel_elsewhere(micro):
    assert [attention_impl_for("auto", p) for p in ("cpu", "gpu", "tpu")] == [
        "einsum",
        "pallas_gpu",
        "splash",
    ]
    impls = ("xla", "cudnn", "einsum", "splash", "pallas_gpu")
    assert [attention_impl_for(i, "cpu") for i in impls] == list(impls)
    # A model built outside a run (a notebook) keeps "auto" and runs the default backend's choice.
    cfg = registry.model_config(micro("clm"), 40)
    assert cfg.attention_impl == "auto"
    tokens = jnp.array([[1, 9, 10, 11, 12]])
    mask = make_attention_mask("causal", jnp.ones_like(tokens))
    positions = jnp.arange(5)[None]
    models = {i: registry.make_model(dataclasses.replace(cfg, attention_impl=i), nnx.Rngs(0)) for i in IMPLS}
    # Which matmuls each runs (the library call's are 5-D, grouped for GQA): the same as einsum's.
    dots = {
        impl: count_dots(jax.make_jaxpr(lambda m=model: m(tokens, mask, positions))().jaxpr)
        for impl, model in models.items()
    }
    assert dots["auto"] == dots["einsum"] != dots["xla"]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["clm", "mlm", "prefix_lm"])
def test_written_out_attention_equals_the_library_call(objective, micro, tmp_path):
    ref_state, ref = _setup(micro, tmp_path, objective, **{"model.attention_impl": "xla"})(1)
    state, metrics = _setup(micro, tmp_path, objective, **{"model.attention_impl": "einsum"})(1)
    assert float(metrics["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(float(ref["grad_norm"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_written_out_attention_decodes_like_the_library_call(micro, tmp_path):
    config = micro("clm")
    logits = []
    for impl in ("xla", "einsum"):
        cfg = dataclasses.replace(registry.model_config(config, 40), attention_impl=impl)
        model = registry.make_model(cfg, nnx.Rngs(0))
        cache = model.init_cache(2, 12)
        tokens = jnp.array([[1, 9, 10, 11, 12], [0, 0, 1, 13, 14]])  # the second row left-padded
        valid = tokens != 0
        positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
        out, cache = model.extend(tokens, positions, valid, cache)
        step, _ = model.extend(jnp.array([[15], [16]]), positions[:, -1:] + 1, jnp.ones((2, 1), bool), cache)
        logits.append(np.concatenate([np.asarray(out)[valid], np.asarray(step)[:, 0]]))
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_bf16_compute_keeps_fp32_params_and_optimizer_state(micro, tmp_path):
    _, ref = _setup(micro, tmp_path, adam=True)(1)
    state, metrics = _setup(micro, tmp_path, adam=True, **{"model.dtype": "bfloat16"})(1)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype("float32")}
    assert float(metrics["loss"]) == pytest.approx(float(ref["loss"]), rel=2e-2)
    assert float(metrics["loss"]) != float(ref["loss"])  # it did run in lower precision

    config = micro("clm", **{"model.dtype": "bfloat16"})
    model = registry.make_model(registry.model_config(config, 23), nnx.Rngs(0))
    tokens = jnp.zeros((1, 8), jnp.int32)
    mask = make_attention_mask("causal", jnp.ones((1, 8), jnp.int32))
    assert model.hidden_states(tokens, mask, jnp.arange(8)[None]).dtype == jnp.bfloat16
    assert model(tokens, mask, jnp.arange(8)[None]).dtype == jnp.float32  # logits in fp32


@pytest.mark.slow
def test_memory_check_reports_the_step_and_stops_when_it_cannot_fit(micro, tmp_path):
    config = micro("clm")
    source = make_source(config, str(tmp_path))
    cfg = registry.model_config(config, source.vocab_size)
    tx = step_lib.make_optimizer(config)
    graphdef, _ = step_lib.abstract_model(cfg)
    state = jax.jit(lambda: step_lib.init_state(cfg, tx, 0))()
    fn = step_lib.make_train_step(
        graphdef, tx, make_objective(config, 23), "causal", step_lib.make_schedule(config)
    )
    compiled = jax.jit(fn, donate_argnums=0).lower(state, next(source.train_iterator())).compile()
    memory = step_memory(compiled)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    assert memory["argument_bytes"] >= state_bytes and memory["peak_bytes"] > 0
    check_fits(memory, None)  # no known limit (CPU): nothing to check
    check_fits(memory, memory["peak_bytes"])
    with pytest.raises(ConfigError, match=r"needs .* GiB per device .* model.remat=full"):
        check_fits(memory, memory["peak_bytes"] - 1)


def test_cudnn_attention_is_refused_where_it_cannot_run(micro, tmp_path):
    with pytest.raises(ConfigError, match="attention_impl='cudnn' runs in bfloat16 or float16 only"):
        validate(micro("clm", **{"model.attention_impl": "cudnn"}))
    with pytest.raises(ConfigError, match="attention_impl=.cudnn. runs on gpu, and this run is on cpu"):
        train_and_evaluate(
            micro("clm", **{"model.attention_impl": "cudnn", "model.dtype": "bfloat16"}), str(tmp_path)
        )
    with pytest.raises(ConfigError, match="grad_accum_steps=3 must be >= 1 and divide batch_size=8"):
        validate(micro("clm", grad_accum_steps=3))
