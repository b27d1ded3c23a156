import jax.numpy as jnp
import numpy as np
import pytest

from models.masks import key_limits, make_attention_mask


def _mask(kind, seg, prefix=None):
    seg = jnp.asarray([seg], jnp.int32)
    prefix = None if prefix is None else jnp.asarray([prefix], bool)
    return np.asarray(make_attention_mask(kind, seg, prefix_BL=prefix))[0, 0]


def test_causal_is_lower_triangular():
    np.testing.assert_array_equal(_mask("causal", [1, 1, 1, 1]), np.tril(np.ones((4, 4), bool)))


def test_bidirectional_sees_everything():
    assert _mask("bidirectional", [1, 1, 1]).all()


def test_prefix_is_bidirectional_inside_prefix_and_causal_after():
    m = _mask("prefix", [1, 1, 1, 1, 1], prefix=[1, 1, 0, 0, 0])
    expected = np.tril(np.ones((5, 5), bool))
    expected[0, 1] = True  # the first prefix token sees the second
    np.testing.assert_array_equal(m, expected)


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_packed_documents_never_see_each_other(kind):
    seg = [1, 1, 1, 2, 2, 0]
    m = _mask(kind, seg)
    seg = np.asarray(seg)
    for q in range(6):
        for k in range(6):
            if seg[q] != seg[k]:
                assert not m[q, k], (q, k)


def test_padding_keys_are_hidden_and_padding_queries_see_only_themselves():
    m = _mask("bidirectional", [1, 1, 0, 0])
    assert not m[:2, 2:].any()
    np.testing.assert_array_equal(m[2], [False, False, True, False])
    np.testing.assert_array_equal(m[3], [False, False, False, True])


def test_unknown_kind_and_missing_prefix_are_errors():
    with pytest.raises(ValueError, match="not one of"):
        _mask("sideways", [1, 1])
    with pytest.raises(ValueError, match="prefix_BL"):
        _mask("prefix", [1, 1])


def _packed_segments(B: int, L: int, seed: int = 0) -> np.ndarray:
    """Rows of 1-4 documents and some trailing padding."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((B, L), np.int32)
    for b in range(B):
        end = rng.integers(L // 2, L + 1)
        cuts = np.sort(rng.choice(np.arange(1, end), rng.integers(0, 4), replace=False))
        seg[b, :end] = 1 + np.searchsorted(cuts, np.arange(end), side="right")
    return seg


@pytest.mark.parametrize("L", [64, 128, 256, 320, 1024])
def test_key_limits_only_bound_keys_the_mask_forbids(L):
    """For every query chunk, no key at or past its limit is allowed, packed and padded rows too."""
    limits = key_limits("causal", L)
    if L < 128:
        assert limits is None  # too short to split into chunks of 64 queries
        return
    assert limits[-1] == L and len(limits) == min(4, L // 64)
    mask = np.asarray(make_attention_mask("causal", jnp.asarray(_packed_segments(8, L))))[:, 0]
    chunk = L // len(limits)
    for i, limit in enumerate(limits):
        assert not mask[:, i * chunk : (i + 1) * chunk, limit:].any()
    # Tight: in a row of one document, some query of each chunk sees the key just below its
    # limit, so no lower bound holds (and a bound past the chunk's end would fail here).
    whole = np.asarray(make_attention_mask("causal", jnp.ones((1, L), jnp.int32)))[0, 0]
    assert all(whole[i * chunk : (i + 1) * chunk, limit - 1].any() for i, limit in enumerate(limits))


@pytest.mark.parametrize("kind", ["bidirectional", "prefix"])
def test_no_key_limits_where_queries_see_later_keys(kind):
    assert key_limits(kind, 256) is None
