"""The string-level API (`generate`, `fill_mask`, `score`, `embed`) equals the lower-level
functions it wraps, on ids built here by hand, with rows of different lengths in one batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from flax import nnx

from models import decode, scoring
from models.masks import make_attention_mask
from models.registry import make_model, model_config
from train.inference.load import SymbolTokenizer, Trained
from train.tokenizer.vocab import BOS_ID, DEFAULT, EOS_ID, MASK_ID, NUM_SPECIAL

V = 23  # the micro config's 16 HMM symbols and 7 special ids


def _trained(objective: str, mask: str, **overrides) -> Trained:
    model = make_model(model_config(micro_config(objective, **overrides), V), nnx.Rngs(3))
    for path, p in nnx.iter_graph(model):  # far from uniform, so that context matters
        if isinstance(p, nnx.Param):
            p.value = p.value * 3.0 + 0.02 * jax.random.normal(jax.random.PRNGKey(len(path)), p.value.shape)
    model.eval()
    identity = {"objective": objective, "mask": mask, "dataset": "hmm", "model": {}}
    return Trained(model, identity, None, SymbolTokenizer(V), step=0, checkpoint="")


@pytest.fixture(scope="module")
def gpt() -> Trained:
    return _trained("clm", "causal")


@pytest.fixture(scope="module")
def bert() -> Trained:
    return _trained("mlm", "bidirectional")


TEXTS = ["s3 s7 s1 s12", "s4", "s0 s15 s2 s2 s9 s11 s6"]


def _ids(text: str) -> list[int]:
    return [int(w[1:]) + NUM_SPECIAL if w.startswith("s") else MASK_ID for w in text.split()]


def _rows(texts, end: bool) -> dict[str, np.ndarray]:
    rows = [[BOS_ID, *_ids(t), *([EOS_ID] if end else [])] for t in texts]
    L = max(map(len, rows))
    out = {k: np.zeros((len(rows), L), np.int32) for k in ("tokens", "segment_ids", "positions")}
    for i, r in enumerate(rows):
        out["tokens"][i, : len(r)], out["segment_ids"][i, : len(r)] = r, 1
        out["positions"][i, : len(r)] = np.arange(len(r))
    return out


@pytest.mark.slow
def test_generate_equals_the_decoder(gpt):
    for temperature, seed in ((0.0, 0), (0.9, 4)):
        got = gpt.generate(TEXTS, max_new_tokens=6, temperature=temperature, top_p=0.9, seed=seed)
        cfg = decode.SamplingConfig(6, temperature, 0, 0.9, eos_id=EOS_ID)
        want = decode.generate(gpt.model, [[BOS_ID, *_ids(t)] for t in TEXTS], cfg, jax.random.PRNGKey(seed))
        assert got == [gpt.tokenizer.decode(t) for t in want.tokens]
        assert all(len(s.split()) >= 1 for s in got)
    with pytest.raises(ValueError, match="fill_mask"):
        _trained("mlm", "bidirectional").generate(TEXTS)


def test_fill_mask_equals_the_lower_level_function(bert):
    texts = ["s3 <mask> s1 s12", "<mask> s4 <mask>"]
    got = bert.fill_mask(texts, top_k=4)
    want = decode.fill_mask(bert.model, _rows(texts, end=True), mask_id=MASK_ID, top_k=4)
    assert [len(r) for r in got] == [1, 2]
    for got_row, want_row in zip(got, want, strict=True):
        for g, w in zip(got_row, want_row, strict=True):
            assert [p.id for p in g] == w.token_ids
            np.testing.assert_allclose([p.prob for p in g], w.probs, rtol=1e-6)
            assert [p.token for p in g] == [bert.tokenizer.token(i) for i in w.token_ids]
    with pytest.raises(ValueError, match="<mask>"):
        bert.fill_mask(["s3 s4"])


@pytest.mark.parametrize(
    ("objective", "mask"), [("clm", "causal"), ("hybrid", "causal"), ("prefix_lm", "prefix")]
)
def test_fill_mask_refuses_a_model_that_reads_only_the_left(objective, mask):
    """As `generate` refuses a bidirectional model: a causal model's logits at a mask are a guess
    from the left context alone, so they are refused rather than returned as if filled."""
    with pytest.raises(ValueError, match=f"the {mask} mask .*does not fill masks: use generate"):
        _trained(objective, mask).fill_mask(["s3 <mask> s1"])


def test_score_is_the_log_likelihood_or_the_pseudo_log_likelihood(gpt, bert):
    causal = _rows(TEXTS, end=False)
    want = scoring.causal_log_likelihood(
        gpt.model, causal["tokens"], causal["segment_ids"], causal["positions"]
    )
    np.testing.assert_allclose(gpt.score(TEXTS), want, rtol=1e-6)
    whole = _rows(TEXTS, end=True)
    want = scoring.pseudo_log_likelihood(
        bert.model,
        whole["tokens"],
        whole["segment_ids"],
        whole["positions"],
        mask_id=MASK_ID,
        special_ids=DEFAULT.ids,
    )
    np.testing.assert_allclose(bert.score(TEXTS), want, rtol=1e-6)
    # Both sum over the text's own tokens: a longer text of the same model scores lower here.
    assert (gpt.score(TEXTS) < 0).all() and (bert.score(TEXTS) < 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt", "bert"])
def test_embed_pools_the_final_hidden_states_and_ignores_padding(name, gpt, bert):
    trained = {"gpt": gpt, "bert": bert}[name]
    bidirectional = name == "bert"
    rows = _rows(TEXTS, end=bidirectional)
    kind = "bidirectional" if bidirectional else "causal"
    h = np.asarray(
        trained.model.hidden_states(
            jnp.asarray(rows["tokens"]),
            make_attention_mask(kind, jnp.asarray(rows["segment_ids"])),
            rows["positions"],
        )
    )
    n = [len(t.split()) for t in TEXTS]
    mean = trained.embed(TEXTS)
    for b in range(len(TEXTS)):
        np.testing.assert_allclose(mean[b], h[b, 1 : 1 + n[b]].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(trained.embed(TEXTS, pooling="first"), h[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(trained.embed(TEXTS, pooling="last"), h[np.arange(3), n], rtol=1e-5, atol=1e-5)
    # One text alone (no padding in its batch) embeds as it does in the padded batch.
    np.testing.assert_allclose(trained.embed(TEXTS[1:2]), mean[1:2], rtol=1e-5, atol=1e-5)


def test_bad_input_is_named(gpt):
    with pytest.raises(TypeError, match="list of strings"):
        gpt.score("s3 s4")
    with pytest.raises(ValueError, match="pooling"):
        gpt.embed(TEXTS, pooling="max")
    learned = _trained("clm", "causal", **{"model.position": "learned"})  # a 32-entry table
    assert learned.score([" ".join(["s1"] * 31)]).shape == (1,)
    with pytest.raises(ValueError, match="max_len=32"):
        learned.score([" ".join(["s1"] * 32)])
