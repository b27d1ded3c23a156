import jax.numpy as jnp
import numpy as np
import pytest

from models.masks import make_attention_mask


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
