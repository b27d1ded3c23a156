"""The objectives as data transforms: targets, weights and MLM selection statistics."""

import jax
import numpy as np
import pytest

from train.data.vocab import BOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID
from train.objectives import CausalLM, MaskedLM

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


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_mlm_selects_exactly_the_rate_of_each_row(rate):
    batch = _batch(np.random.default_rng(1), B=8, L=64, pad_from=50)
    out = MaskedLM(vocab_size=V, rate=rate).transform(batch, jax.random.PRNGKey(0))
    n_eligible = 49  # 50 real tokens minus BOS
    np.testing.assert_array_equal(np.asarray(out["weights"]).sum(1), round(rate * n_eligible))


def test_mlm_eval_pattern_masks_every_selected_token():
    batch = _batch(np.random.default_rng(2), B=16, L=64)
    out = MaskedLM(vocab_size=V).for_eval().transform(batch, jax.random.PRNGKey(0))
    w = np.asarray(out["weights"])
    new = np.take_along_axis(np.asarray(out["inputs"]), np.asarray(out["mlm_positions"]), 1)
    assert (new[w] == MASK_ID).all()


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
