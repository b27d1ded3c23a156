"""Options of the shared block (claims C1, C5, C8): each one's defining property, and that it trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import registry
from models.masks import make_attention_mask
from models.positions import apply_rotary
from models.transformer import Transformer, TransformerConfig
from train.data.sources import make_source
from train.loop import step as step_lib
from train.objectives import make_objective

L = 10


def _model(**kw) -> Transformer:
    cfg = dict(vocab_size=64, d_model=32, num_heads=4, num_layers=2, mlp_dim=64, max_len=32)
    return Transformer(TransformerConfig(**{**cfg, **kw}), rngs=nnx.Rngs(0))


def _encode(model, tokens, kind="bidirectional", positions=None):
    tokens = jnp.asarray(tokens)[None]
    positions = jnp.arange(tokens.shape[1])[None] if positions is None else jnp.asarray(positions)[None]
    mask = make_attention_mask(kind, jnp.ones(tokens.shape, jnp.int32))
    return np.asarray(model.hidden_states(tokens, mask, positions)[0])


def test_rotary_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)

    def score(i, j):
        qi = apply_rotary(q, jnp.asarray([[i]]))
        kj = apply_rotary(k, jnp.asarray([[j]]))
        return float((qi * kj).sum())

    for shift in (1, 7, 100):
        assert score(3 + shift, 1 + shift) == pytest.approx(score(3, 1), rel=1e-4, abs=1e-5)
    assert score(3, 1) != pytest.approx(score(1, 3), rel=1e-3)


def test_rotary_is_the_pairwise_rotation_exactly():
    """The permutation-matmul form equals (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 3, 8)).astype(np.float32)
    positions = rng.integers(0, 5000, size=(2, 9))
    angles = positions[..., None, None] * 10_000.0 ** (-np.arange(4, dtype=np.float32) / 4)
    sin, cos = np.sin(angles.astype(np.float32)), np.cos(angles.astype(np.float32))
    x1, x2 = x[..., :4], x[..., 4:]
    expected = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    np.testing.assert_allclose(
        np.asarray(apply_rotary(jnp.asarray(x), jnp.asarray(positions))), expected, atol=2e-6
    )
    # A rotation preserves norms, so its gradient of |R x|^2 is 2x.
    grad = jax.grad(lambda v: (apply_rotary(v, jnp.asarray(positions)) ** 2).sum())(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(grad), 2 * x, atol=1e-5)
    bf16 = apply_rotary(jnp.asarray(x, jnp.bfloat16), jnp.asarray(positions))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32), expected, atol=0.05)


def test_bidirectional_model_without_positions_is_permutation_equivariant():
    model = _model(position="none")
    tokens = np.arange(10, 10 + L)
    perm = np.random.default_rng(0).permutation(L)
    np.testing.assert_allclose(_encode(model, tokens[perm]), _encode(model, tokens)[perm], atol=1e-5)


@pytest.mark.parametrize("position,changes", [("learned", True), ("sinusoidal", True), ("rotary", False)])
def test_absolute_encodings_change_outputs_under_a_shift_and_rotary_does_not(position, changes):
    model = _model(position=position)
    tokens = np.arange(10, 10 + L)
    a = _encode(model, tokens, positions=np.arange(L))
    b = _encode(model, tokens, positions=np.arange(L) + 5)
    assert (not np.allclose(a, b, atol=1e-4)) == changes


def _train_once(model, tokens):
    """One train-mode forward, as in train_step: returns the updated BatchNorm statistics."""
    graphdef, params, stats = step_lib.split_model(model)
    m = nnx.merge(graphdef, params, stats)
    _encode_batch(m, tokens)
    return step_lib.split_model(m)[2]


def _encode_batch(model, tokens_BL, kind="causal"):
    B, Lx = tokens_BL.shape
    mask = make_attention_mask(kind, jnp.ones((B, Lx), jnp.int32))
    return model.hidden_states(jnp.asarray(tokens_BL), mask, jnp.broadcast_to(jnp.arange(Lx), (B, Lx)))


def test_batchnorm_updates_running_statistics_in_training_and_uses_them_at_eval():
    model = _model(norm="batchnorm")
    rng = np.random.default_rng(0)
    tokens = rng.integers(7, 64, (4, L))
    stats = _train_once(model, tokens)
    assert not np.allclose(stats["blocks"][0]["attn_norm"]["mean"], 0.0)
    graphdef, params, _ = step_lib.split_model(model)
    trained = nnx.merge(graphdef, params, stats)
    trained.eval()
    # At eval, one sequence's output does not depend on what else is in the batch...
    other = tokens.copy()
    other[1:] = rng.integers(7, 64, (3, L))
    np.testing.assert_allclose(_encode_batch(trained, tokens)[0], _encode_batch(trained, other)[0], atol=1e-5)
    # ...while in training mode it does: the statistics come from the batch.
    train_mode = nnx.merge(graphdef, params, stats)
    a, b = _encode_batch(train_mode, tokens)[0], _encode_batch(train_mode, other)[0]
    assert not np.allclose(a, b, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("train_mode", [True, False])
def test_batchnorm_leaks_the_future_into_a_causal_model_only_while_training(train_mode):
    """Batch statistics pooled over time carry later tokens into earlier positions (claim C8)."""
    model = _model(norm="batchnorm")
    graphdef, params, stats = step_lib.split_model(model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(7, 64, (4, L)))

    def first_position(embedding):
        p = jax.tree.map(lambda x: x, params)
        p["embed"]["embedding"] = embedding
        m = nnx.merge(graphdef, p, stats)
        if not train_mode:
            m.eval()
        return _encode_batch(m, tokens)[0, 0].sum()

    g = jax.grad(first_position)(params["embed"]["embedding"])
    future_tokens = np.unique(np.asarray(tokens[0, 1:]))
    future_tokens = [t for t in future_tokens if t != int(tokens[0, 0])]
    leak = float(np.abs(np.asarray(g)[future_tokens]).sum())
    assert (leak > 0) == train_mode


OPTIONS = (
    [{"model.position": p} for p in ("none", "learned", "sinusoidal", "rotary")]
    + [{"model.norm": n} for n in ("rmsnorm", "batchnorm")]  # layernorm: the default, in every run
    + [
        {"model.norm_position": "post"},
        {"model.attn_scale": "one"},
        {"model.attn_scale": "inv"},
        {"model.num_heads": 1},
        {"optim.warmup_steps": 0},
        {"model.arch": "lstm"},
    ]
)


@pytest.mark.slow
@pytest.mark.parametrize("objective_name", ["clm", "mlm"])
@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_each_option_builds_and_trains_a_step(option, objective_name, micro, tmp_path):
    # One block: each option's code runs, at half the compile of two.
    config = micro(objective_name, **{"model.num_layers": 1, **option})
    source = make_source(config, str(tmp_path))
    cfg = registry.model_config(config, source.vocab_size)
    tx = step_lib.make_optimizer(config)
    graphdef, _ = step_lib.abstract_model(cfg)
    state = jax.jit(lambda: step_lib.init_state(cfg, tx, 0))()
    before = jax.tree.map(np.asarray, state.params)
    step = jax.jit(
        step_lib.make_train_step(
            graphdef,
            tx,
            make_objective(config, source.vocab_size),
            config.mask,
            step_lib.make_schedule(config),
        )
    )
    it = source.train_iterator()
    for _ in range(2):
        state, metrics = step(state, next(it))
    assert np.isfinite(float(metrics["loss"]))
    moved = jax.tree.map(lambda a, b: not np.allclose(a, np.asarray(b)), before, state.params)
    assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_lstm_direction_follows_the_mask_kind(kind):
    from models.lstm import LSTMLM, LSTMConfig

    model = LSTMLM(LSTMConfig(64, 16, 2, bidirectional=kind == "bidirectional"), rngs=nnx.Rngs(0))
    graphdef, params, rest = step_lib.split_model(model)
    tokens = jnp.arange(10, 10 + L)[None]

    probe = jax.random.normal(jax.random.PRNGKey(1), (16,))  # a plain sum after LayerNorm is constant

    def out_at(params, i):
        return nnx.merge(graphdef, params, rest).hidden_states(tokens)[0, i] @ probe

    grad_at = jax.jit(jax.grad(out_at))  # one compile for every position i
    reach = np.stack(
        [np.abs(np.asarray(grad_at(params, i)["embed"]["embedding"][10 : 10 + L])).sum(-1) for i in range(L)]
    )
    future = np.triu(np.ones((L, L), bool), k=1)
    assert (reach[future] > 0).all() == (kind == "bidirectional")
    assert (reach[future] == 0).all() == (kind == "causal")
    assert (reach[~future] > 0).all()
