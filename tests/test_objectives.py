"""The objectives as data transforms: targets, weights and MLM selection statistics."""

import jax
import numpy as np
import pytest

from models.masks import make_attention_mask
from train.objectives import CausalLM, HybridLM, MaskedLM, PrefixLM
from train.tokenizer.vocab import BOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID

V = 100


def _batch(rng, B=64, L=128, pad_from=None):
    tokens = rng.integers(NUM_SPECIAL, V, (B, L)).astype(np.int32)
    tokens[:, 0] = BOS_ID
    seg = np.ones((B, L), np.int32)
    if pad_from is not None:
        tokens[:, pad_from:] = PAD_ID
        seg[:, pad_from:] = 0
    return {"tokens": tokens, "segment_ids": seg, "positions": np.tile(np.arange(L), (B, 1))}


def test_clm_targets_are_next_tokens_within_a_document():
    tokens = np.array([[BOS_ID, 10, 11, BOS_ID, 20, 21, PAD_ID, PAD_ID]], np.int32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 0, 0]], np.int32)
    out = CausalLM().transform({"tokens": tokens, "segment_ids": seg, "positions": seg})
    np.testing.assert_array_equal(out["targets"][0, :6], [10, 11, BOS_ID, 20, 21, PAD_ID])
    # No target crosses into the next document or into padding.
    np.testing.assert_array_equal(out["weights"][0], [1, 1, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(CausalLM().scored_tokens(out)[0], [0, 1, 1, 0, 1, 1, 0, 0])


def test_mlm_selection_statistics_over_many_draws():
    rng = np.random.default_rng(0)
    batch = _batch(rng, pad_from=100)
    objective = MaskedLM(vocab_size=V)
    transform = jax.jit(objective.transform)
    selected = masked = randomised = kept = eligible = 0
    special_or_pad_selected = 0
    for i in range(40):
        out = jax.device_get(transform(batch, jax.random.PRNGKey(i)))
        w = out["weights"]
        pos = out["mlm_positions"]
        orig = np.take_along_axis(batch["tokens"], pos, 1)
        new = np.take_along_axis(out["inputs"], pos, 1)
        np.testing.assert_array_equal(out["targets"], orig)
        special_or_pad_selected += int(((orig < NUM_SPECIAL) & w).sum())
        selected += int(w.sum())
        masked += int(((new == MASK_ID) & w).sum())
        same = (new == orig) & w
        kept += int(same.sum())
        randomised += int((w & (new != MASK_ID) & (new != orig)).sum())
        eligible += int(((batch["tokens"] >= NUM_SPECIAL) & (batch["segment_ids"] > 0)).sum())
        # Unselected tokens are untouched.
        changed = out["inputs"] != batch["tokens"]
        chosen = np.zeros_like(changed)
        np.put_along_axis(chosen, pos, w, 1)
        assert not (changed & ~chosen).any()
    assert special_or_pad_selected == 0
    assert selected / eligible == pytest.approx(0.15, abs=0.005)
    assert masked / selected == pytest.approx(0.8, abs=0.01)
    # A random replacement equals the original 1 time in (V - NUM_SPECIAL): counted as kept.
    p_same = 0.1 / (V - NUM_SPECIAL)
    assert randomised / selected == pytest.approx(0.1 - p_same, abs=0.01)
    assert kept / selected == pytest.approx(0.1 + p_same, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_mlm_selects_exactly_the_rate_of_each_row(rate):
    batch = _batch(np.random.default_rng(1), B=8, L=64, pad_from=50)
    out = MaskedLM(vocab_size=V, rate=rate).transform(batch, jax.random.PRNGKey(0))
    n_eligible = 49  # 50 real tokens minus BOS
    np.testing.assert_array_equal(np.asarray(out["weights"]).sum(1), round(rate * n_eligible))


@pytest.mark.slow
def test_mlm_eval_pattern_masks_every_selected_token():
    batch = _batch(np.random.default_rng(2), B=16, L=64)
    out = MaskedLM(vocab_size=V).for_eval().transform(batch, jax.random.PRNGKey(0))
    w = np.asarray(out["weights"])
    new = np.take_along_axis(np.asarray(out["inputs"]), np.asarray(out["mlm_positions"]), 1)
    assert (new[w] == MASK_ID).all()


@pytest.mark.slow
def test_mlm_scores_only_selected_positions():
    """The vocab projection sees K = ceil(rate * L) hidden states per row, not L."""
    from flax import nnx

    from models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(vocab_size=V, d_model=16, num_heads=2, num_layers=1, mlp_dim=32, max_len=64)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    objective = MaskedLM(vocab_size=V)
    out = objective.transform(_batch(np.random.default_rng(3), B=2, L=64), jax.random.PRNGKey(0))
    seen = []
    original = model.logits
    model.logits = lambda h: (seen.append(h.shape), original(h))[1]
    objective.scores(model, out, "bidirectional")
    assert seen == [(2, objective.max_predictions(64), 16)]


def _sees_beyond(mask_B1LL: np.ndarray, scored_BL: np.ndarray) -> bool:
    """Whether any scored position t may attend to a position after t (where its target is)."""
    L = scored_BL.shape[1]
    future_LL = np.arange(L)[None, :] > np.arange(L)[:, None]
    return bool((mask_B1LL[:, 0] & future_LL[None] & scored_BL[:, :, None]).any())


def test_prefix_lm_scores_only_after_the_split_and_never_sees_its_targets():
    batch = _batch(np.random.default_rng(1), B=256, L=32, pad_from=24)
    out = jax.jit(PrefixLM().transform)(batch, jax.random.PRNGKey(0))
    prefix, weights = np.asarray(out["prefix"]), np.asarray(out["weights"])
    split = prefix.sum(1)
    # A contiguous prefix from BOS, with at least one real token left to predict.
    np.testing.assert_array_equal(prefix, np.arange(32)[None] < split[:, None])
    assert split.min() == 1 and split.max() == 23 and len(np.unique(split)) > 15
    expected = (np.arange(32)[None] >= split[:, None] - 1) & (np.arange(32)[None] < 23)
    np.testing.assert_array_equal(weights, expected)
    mask = np.asarray(make_attention_mask("prefix", out["segment_ids"], prefix_BL=out["prefix"]))
    assert not _sees_beyond(mask, weights)
    # Under the same mask, the prefix tokens do see ahead (within the prefix).
    assert _sees_beyond(mask, prefix & (np.arange(32)[None] < split[:, None] - 1))


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_hybrid_mixes_causal_and_masked_next_token_rows(fraction):
    B, L = 64, 128
    batch = _batch(np.random.default_rng(2), B=B, L=L)
    objective = HybridLM(vocab_size=V, causal_fraction=fraction)
    out = jax.device_get(jax.jit(objective.transform)(batch, jax.random.PRNGKey(3)))
    causal = ~out["prefix"][:, 0]
    assert causal.sum() == round(fraction * B)
    assert (out["prefix"] == ~causal[:, None]).all()  # each row wholly causal or bidirectional
    clm = CausalLM().transform(batch)
    np.testing.assert_array_equal(out["inputs"][causal], batch["tokens"][causal])
    np.testing.assert_array_equal(out["weights"][causal], np.asarray(clm["weights"])[causal])
    np.testing.assert_array_equal(out["targets"], np.asarray(clm["targets"]))
    mask = np.asarray(make_attention_mask("prefix", out["segment_ids"], prefix_BL=out["prefix"]))
    assert not _sees_beyond(mask[causal], out["weights"][causal])
    if fraction < 1.0:
        masked = ~causal
        # Masked rows predict token t+1 at position t exactly where t+1 was selected: 15%.
        changed_next = np.pad(out["inputs"] != batch["tokens"], ((0, 0), (0, 1)))[:, 1:]
        assert not (changed_next & ~out["weights"])[masked].any()
        rate = out["weights"][masked].sum() / (masked.sum() * (L - 1))
        assert abs(rate - 0.15) < 0.01
        view = jax.device_get(jax.jit(objective.masked_view().transform)(batch, jax.random.PRNGKey(3)))
        next_inputs = np.pad(view["inputs"], ((0, 0), (0, 1)))[:, 1:]
        assert (next_inputs[view["weights"]] == MASK_ID).all()
        assert objective.masked_view().oracle == "mlm"
    assert objective.for_eval().oracle == "clm"
