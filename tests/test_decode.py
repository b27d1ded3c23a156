"""KV-cache decoding equals the parallel forward (C6); sampling stays inside its sets; fill-mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.decode import (
    SamplingConfig,
    fill_mask,
    filter_logits,
    generate,
    left_pad,
    sample_logits,
)
from models.masks import make_attention_mask
from models.transformer import Transformer, TransformerConfig

V = 40


def _model(**kw) -> Transformer:
    cfg = TransformerConfig(vocab_size=V, d_model=32, num_heads=4, num_layers=2, mlp_dim=64, max_len=64, **kw)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    # Larger weights than at init, so that attention patterns are far from uniform.
    for path, p in nnx.iter_graph(model):
        if isinstance(p, nnx.Param):
            p.value = p.value * 4.0 + 0.01 * jax.random.normal(jax.random.PRNGKey(len(path)), p.value.shape)
    model.eval()
    return model


@nnx.jit(static_argnames=("kind",))  # one program per shape, instead of op by op
def _parallel_logits(model, tokens_BL, kind="causal", prefix_BL=None):
    B, L = tokens_BL.shape
    seg = jnp.ones((B, L), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    return model(tokens_BL, make_attention_mask(kind, seg, prefix_BL=prefix_BL), pos)


@nnx.jit
def _extend(model, tokens_BT, positions_BT, valid_BT, cache, prefix_BT=None):
    """`model.extend` compiled once per shape (the code under test is the same)."""
    return model.extend(tokens_BT, positions_BT, valid_BT, cache, prefix_BT=prefix_BT)


OPTIONS = [
    {},
    {"position": "learned", "norm_position": "post"},
    {"position": "sinusoidal", "norm": "rmsnorm"},
    {"position": "none"},
    {"norm": "batchnorm"},
]


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o.values()) or "default")
def test_cached_decoding_equals_parallel_forward(options):
    model = _model(**options)
    tokens_BL = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, V)
    expected_BLV = _parallel_logits(model, tokens_BL)

    cache = model.init_cache(2, 12)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    valid = jnp.ones((2, 12), bool)
    got, cache = _extend(model, tokens_BL[:, :3], pos[:, :3], valid[:, :3], cache)  # prefill
    pieces = [got]
    for t in range(3, 12):  # then one token at a time
        got, cache = _extend(model, tokens_BL[:, t : t + 1], pos[:, t : t + 1], valid[:, t : t + 1], cache)
        pieces.append(got)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), expected_BLV, atol=2e-5, rtol=1e-5)
    assert int(cache.index) == 12


@pytest.mark.slow
def test_left_padded_prompts_decode_like_each_prompt_alone():
    model = _model()
    prompts = [[1, 9, 10, 11, 12, 13], [1, 20], [1, 30, 31, 32]]
    batch = left_pad(prompts)
    cache = model.init_cache(3, 8)
    logits_BPV, cache = _extend(
        model,
        jnp.asarray(batch["tokens"]),
        jnp.asarray(batch["positions"]),
        jnp.asarray(batch["valid"]),
        cache,
    )
    next_tokens = jnp.array([[5], [6], [7]])
    step_B1V, _ = _extend(
        model, next_tokens, jnp.asarray(batch["positions"][:, -1:] + 1), jnp.ones((3, 1), bool), cache
    )
    for i, p in enumerate(prompts):
        alone = _parallel_logits(model, jnp.array([p + [int(next_tokens[i, 0])]]))
        np.testing.assert_allclose(logits_BPV[i, -1], alone[0, len(p) - 1], atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(step_B1V[i, 0], alone[0, len(p)], atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_bidirectional_prompt_matches_the_prefix_mask():
    model = _model()
    tokens_BL = jax.random.randint(jax.random.PRNGKey(2), (1, 10), 0, V)
    prefix_BL = jnp.arange(10)[None] < 4
    expected = _parallel_logits(model, tokens_BL, "prefix", prefix_BL)
    cache = model.init_cache(1, 10)
    pos = jnp.arange(10)[None]
    valid = jnp.ones((1, 10), bool)
    got, cache = _extend(model, tokens_BL[:, :4], pos[:, :4], valid[:, :4], cache, prefix_BT=valid[:, :4])
    pieces = [got]
    for t in range(4, 10):
        got, cache = _extend(model, tokens_BL[:, t : t + 1], pos[:, t : t + 1], valid[:, :1], cache)
        pieces.append(got)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_greedy_generation_equals_recomputing_the_prefix_and_stops_at_eos():
    model = _model()
    prompts = [[1, 9, 10], [1, 20, 21, 22, 23]]
    out = generate(model, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0), jax.random.PRNGKey(0))
    for p, new in zip(prompts, out.tokens, strict=True):
        seq = list(p)
        for _ in range(6):  # the slow way: a full forward pass per new token
            seq.append(int(jnp.argmax(_parallel_logits(model, jnp.array([seq]))[0, -1])))
        assert new == seq[len(p) :]
    assert out.steps == 6 and out.stopped == [False, False]

    eos = out.tokens[0][2]  # make the first row's third token the end of sequence
    stopped = generate(
        model, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0, eos_id=eos), jax.random.PRNGKey(0)
    )
    first = out.tokens[0][: out.tokens[0].index(eos)]
    assert stopped.tokens[0] == first and stopped.stopped[0]


def test_learned_positions_refuse_to_generate_past_their_table():
    model = _model(position="learned")
    with pytest.raises(ValueError, match="model.max_len=64"):
        generate(model, [[1] * 60], SamplingConfig(max_new_tokens=10), jax.random.PRNGKey(0))


def _sets(logits_V: np.ndarray, top_k: int, top_p: float) -> set[int]:
    """The tokens top-k keeps, then the nucleus of what remains (renormalised), as in HF."""
    allowed = set(range(len(logits_V)))
    if top_k:
        allowed &= set(np.argsort(-logits_V)[:top_k].tolist())
        logits_V = np.where(np.isin(np.arange(len(logits_V)), list(allowed)), logits_V, -np.inf)
    if top_p < 1:
        order = np.argsort(-logits_V)
        probs = np.exp(logits_V - logits_V.max())
        probs /= probs.sum()
        before = np.cumsum(probs[order]) - probs[order]
        allowed &= set(order[before < top_p].tolist())
    return allowed


@pytest.mark.slow
@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.5), (0, 0.9), (8, 0.7), (1, 1.0)])
def test_top_k_and_top_p_never_sample_outside_their_sets(top_k, top_p):
    logits_BV = 2.0 * jax.random.normal(jax.random.PRNGKey(3), (4, V))
    cfg = SamplingConfig(temperature=1.0, top_k=top_k, top_p=top_p)
    keys = jax.random.split(jax.random.PRNGKey(4), 2000)
    draws_NB = np.asarray(jax.vmap(lambda k: sample_logits(k, logits_BV, cfg))(keys))
    filtered = np.asarray(filter_logits(logits_BV, top_k, top_p))
    for b in range(4):
        allowed = _sets(np.asarray(logits_BV[b]), top_k, top_p)
        assert set(np.flatnonzero(np.isfinite(filtered[b])).tolist()) == allowed
        assert set(draws_NB[:, b].tolist()) <= allowed
        # 2000 draws reach every token of the set that has at least 1% of the mass.
        probs = np.exp(filtered[b] - filtered[b].max())
        probs /= probs.sum()
        assert {i for i in allowed if probs[i] > 0.01} <= set(draws_NB[:, b].tolist())


@pytest.mark.slow
def test_fill_mask_returns_the_forward_pass_top_k_at_each_mask():
    model = _model()
    tokens = np.array([[1, 12, 4, 13, 4, 14], [1, 15, 16, 4, 17, 18]], np.int32)
    batch = {
        "tokens": tokens,
        "segment_ids": np.ones_like(tokens),
        "positions": np.broadcast_to(np.arange(6), (2, 6)).astype(np.int32),
    }
    filled = fill_mask(model, batch, mask_id=4, top_k=3)
    assert [[f.position for f in row] for row in filled] == [[2, 4], [3]]
    probs = jax.nn.softmax(_parallel_logits(model, jnp.asarray(tokens), "bidirectional"), -1)
    for b, row in enumerate(filled):
        for f in row:
            expected = np.argsort(-np.asarray(probs[b, f.position]))[:3]
            assert f.token_ids == expected.tolist()
            np.testing.assert_allclose(f.probs, np.asarray(probs[b, f.position])[expected], rtol=1e-5)
