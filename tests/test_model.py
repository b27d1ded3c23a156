"""Properties of the shared model: who sees whom (C2, C7), what trains (C4), one tree (C9)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import bert, gpt
from configs.base import VARIANTS
from models import registry
from models.masks import key_limits, make_attention_mask
from models.transformer import Attention, Transformer, TransformerConfig
from train.loop import step as step_lib
from train.objectives import make_objective

L = 12


def _model(layers: int, position: str = "rotary") -> Transformer:
    cfg = TransformerConfig(
        vocab_size=64,
        d_model=32,
        num_heads=4,
        num_layers=layers,
        mlp_dim=64,
        max_len=L,
        position=position,
    )
    return Transformer(cfg, rngs=nnx.Rngs(0))


def _influence(model: Transformer, kind: str) -> np.ndarray:
    """influence[i, j] = |d h_i / d (embedding of the token at j)|, tokens all distinct."""
    tokens = jnp.arange(10, 10 + L)[None]
    positions = jnp.arange(L)[None]
    mask = make_attention_mask(kind, jnp.ones((1, L), jnp.int32))
    graphdef, params = nnx.split(model)
    probe = jax.random.normal(jax.random.PRNGKey(1), (model.cfg.d_model,))

    def out_at(params, i):
        h = nnx.merge(graphdef, params).hidden_states(tokens, mask, positions)
        return h[0, i] @ probe

    grad_at = jax.jit(jax.grad(out_at))  # one compile for every position i
    rows = []
    for i in range(L):
        g = grad_at(params, i)["embed"]["embedding"].value
        rows.append(np.abs(np.asarray(g[10 : 10 + L])).sum(-1))
    return np.stack(rows)


@pytest.mark.parametrize("layers", [1, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("position", ["rotary", "learned"])
def test_causal_output_has_zero_gradient_from_the_future(layers, position):
    inf = _influence(_model(layers, position), "causal")
    future = np.triu(np.ones((L, L), bool), k=1)
    assert np.all(inf[future] == 0.0)
    assert np.all(inf[~future] > 0.0)


@pytest.mark.parametrize("layers", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_bidirectional_output_depends_on_every_position_in_one_layer(layers):
    assert np.all(_influence(_model(layers), "bidirectional") > 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("variant_module", [gpt, bert])
def test_every_attention_projection_gets_a_gradient(variant_module, micro):
    config = micro("clm" if variant_module is gpt else "mlm")
    cfg = registry.model_config(config, vocab_size=40)
    objective = make_objective(config, 40)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    batch = {
        "tokens": jnp.asarray(rng.integers(7, 40, (4, 32)), jnp.int32),
        "segment_ids": jnp.ones((4, 32), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(32), (4, 32)),
    }
    model_batch = objective.transform(batch, jax.random.PRNGKey(0))

    def loss(params):
        s = objective.scores(nnx.merge(graphdef, params), model_batch, config.mask)
        return s["nll_sum"]

    grads = jax.grad(loss)(params)
    for i in range(cfg.num_layers):
        attn = grads["blocks"][i]["attn"]
        assert "bias" in attn["key"]  # with rotary positions (the default) it can learn
        for proj in ("query", "key", "value", "out"):
            for leaf in attn[proj]:
                g = np.asarray(attn[proj][leaf].value)
                assert np.abs(g).sum() > 0, f"layer {i} {proj}.{leaf} got no gradient"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gpt_and_bert_differ_only_in_objective_and_mask(variant):
    g, b = _flat(gpt.get_config(variant).to_dict()), _flat(bert.get_config(variant).to_dict())
    assert g.keys() == b.keys()
    assert {k for k in g if g[k] != b[k]} == {"objective", "mask"}


def test_gpt_and_bert_build_identical_parameter_trees():
    trees = []
    for module in (gpt, bert):
        cfg = registry.model_config(module.get_config("tiny"), vocab_size=135)
        _, params = step_lib.abstract_model(cfg)
        trees.append(jax.tree.map(lambda p: (p.shape, p.dtype), params))
    assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
    assert jax.tree.leaves(trees[0]) == jax.tree.leaves(trees[1])


def test_packed_document_output_ignores_its_neighbour():
    model = _model(2)
    tokens = jnp.asarray([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]])
    other = tokens.at[0, 6:].set(jnp.asarray([40, 41, 42, 43, 44, 45]))
    seg = jnp.asarray([[1] * 6 + [2] * 6])
    pos = jnp.asarray([list(range(6)) * 2])
    for kind in ("causal", "bidirectional"):
        mask = make_attention_mask(kind, seg)
        a = model.hidden_states(tokens, mask, pos)[0, :6]
        b = model.hidden_states(other, mask, pos)[0, :6]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("options", [{}, {"remat": "dots"}, {"scan_layers": True}])
def test_causal_key_limits_skip_only_forbidden_keys(options):
    """Written-out attention that skips the key blocks above the diagonal (`key_limits`) gives
    the output and gradient of attending to every key, on packed and padded rows."""
    n = 256
    cfg = TransformerConfig(
        vocab_size=64,
        d_model=32,
        num_heads=2,
        num_layers=2,
        mlp_dim=64,
        max_len=n,
        attention_impl="einsum",
        **options,
    )
    graphdef, params, rest = step_lib.split_model(Transformer(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    seg = np.array([[1] * 100 + [2] * 120 + [0] * 36, [1] * n], np.int32)
    tokens = jnp.asarray(rng.integers(1, 64, seg.shape) * (seg != 0))
    positions = jnp.asarray(
        [np.concatenate([np.arange(100), np.arange(120), np.zeros(36)]), np.arange(n)], jnp.int32
    )
    mask = make_attention_mask("causal", jnp.asarray(seg))
    limits = key_limits("causal", n)
    assert limits is not None and len(limits) == 4

    def loss(p, limits):
        h = nnx.merge(graphdef, p, rest).hidden_states(tokens, mask, positions, key_limits=limits)
        return (jnp.where(jnp.asarray(seg)[..., None] != 0, h, 0.0) ** 2).sum(), h

    run = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, h), g = run(params, limits)
    (_, h_ref), g_ref = run(params, None)
    np.testing.assert_allclose(h, h_ref, atol=2e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5 * max(float(np.abs(b).max()), 1.0))


@pytest.mark.parametrize("kind", ["causal", "bidirectional", "prefix"])
def test_written_out_attention_equals_the_library_call_on_packed_padded_rows(kind):
    """The written-out attention (its mask an additive bias) gives the library call's output and
    its gradients with respect to queries, keys and values; a key no query may see gets none."""
    B, n, N, H = 2, 16, 2, 8
    seg = jnp.asarray([[1] * 6 + [2] * 7 + [0] * 3, [1] * n], jnp.int32)
    prefix = jnp.arange(n)[None] < 4
    mask = make_attention_mask(kind, seg, prefix_BL=jnp.broadcast_to(prefix, seg.shape))
    q, k, v = (jax.random.normal(r, (B, n, N, H)) for r in jax.random.split(jax.random.PRNGKey(0), 3))
    probe = jax.random.normal(jax.random.PRNGKey(1), (B, n, N * H))

    def grads(impl):
        cfg = TransformerConfig(
            vocab_size=8, d_model=N * H, num_heads=N, num_layers=1, mlp_dim=8, max_len=n, attention_impl=impl
        )
        graphdef, state = nnx.split(Attention(cfg, rngs=nnx.Rngs(0)))

        def f(q, k, v):
            out = nnx.merge(graphdef, state).attend(q, {"k": k, "v": v}, mask)
            return (out * probe).sum(), out

        return jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (dq, dk, dv), out = grads("einsum")
    (dq_ref, dk_ref, dv_ref), out_ref = grads("xla")
    np.testing.assert_allclose(out, out_ref, atol=1e-5)
    for a, b in ((dq, dq_ref), (dk, dk_ref), (dv, dv_ref)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The padding keys of the first row are seen by no query but themselves.
    np.testing.assert_array_equal(np.asarray(dk[0, 13:]), 0.0)
