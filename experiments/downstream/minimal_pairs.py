"""Minimal pairs: a good and a bad sequence differing in one place; a model should prefer the good one.

Two sources, both as row pairs in the layout of `HMMSource.rows` (dicts of int32 `[N, L]`
`tokens`, `segment_ids`, `positions`; row = `<bos>` then the sequence, padding is id 0 with
segment 0), scored by `models.scoring.minimal_pair_accuracy`:

- `hmm_minimal_pairs`: sequences of the embedded HMM with one token replaced by the symbol the
  HMM makes least probable there given both sides. Usually that probability is exactly 0 (the
  HMM's transitions and emissions are sparse), so the bad sequence is "ungrammatical", and the
  HMM itself gives the ceiling (`oracle_accuracy`).
- `blimp_minimal_pairs`: BLiMP (Warstadt et al. 2020), 67 English paradigms of 1000 pairs,
  through TFDS, encoded with a run's tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from models.errors import ConfigError
from train.data.hmm import HMM
from train.data.sources import hmm_rows
from train.data.tfds import no_stray_temp_folders
from train.tokenizer.vocab import BOS_ID, NUM_SPECIAL

log = logging.getLogger(__name__)

Rows = dict[str, np.ndarray]  # "tokens", "segment_ids", "positions": int32 [N, L]

# Its own stream, so the pairs never coincide with training batches or the eval set.
_PAIRS_STREAM = 0xB1A1


class Encoder(Protocol):
    """What BLiMP needs of a tokenizer (every tokenizer in train/tokenizer/ provides it)."""

    def encode(self, texts: Sequence[str]) -> list[list[int]]: ...


def conditional_symbol_probs(hmm: HMM, x_NT: np.ndarray, t_N: np.ndarray) -> np.ndarray:
    """`[N, V]`: p(x_t = v | every other symbol of the sequence) at position `t_N[n]` of each row.

    Forward-backward with position t unobserved gives p(z_t | x_-t); emitting from it gives the
    distribution of the symbol there.
    """
    N = len(x_NT)
    observed_NT = np.ones(x_NT.shape, bool)
    observed_NT[np.arange(N), t_N] = False
    alpha_NTS, beta_NTS, _ = hmm.forward_backward(x_NT, observed_NT)
    post_NS = alpha_NTS[np.arange(N), t_N] * beta_NTS[np.arange(N), t_N]
    post_NS /= post_NS.sum(-1, keepdims=True)
    return post_NS @ hmm.B


TIE_BREAKS: tuple[str, ...] = ("random", "lowest")


def _wins(good_N: np.ndarray, bad_N: np.ndarray) -> float:
    return float(np.where(good_N > bad_N, 1.0, np.where(good_N == bad_N, 0.5, 0.0)).mean())


def hmm_minimal_pairs(
    hmm: HMM, *, num_pairs: int, seq_len: int, seed: int = 0, tie_break: str = "random"
) -> tuple[Rows, Rows, float]:
    """(good rows, bad rows, oracle accuracy) for `num_pairs` HMM sequences of `seq_len - 1` symbols.

    In each sequence one symbol position is drawn uniformly (any symbol, never `<bos>`) and its
    symbol replaced by the one with the lowest p(x_t = v | x_-t), the original excluded. Rows
    are `seq_len` long with `<bos>` first, as the training rows are. Everything is drawn from
    its own stream of (`hmm.spec.seed`, `seed`).

    The minimum is nearly always p = 0, shared by most of the alphabet. `tie_break="lowest"`
    takes the lowest id among the tied symbols; on the default HMM that makes symbols 0 and 1
    the substitute in ~97% of pairs, a test of where two symbols cannot occur. The default,
    "random", draws uniformly among the tied symbols (from the same seeded stream), so the bad
    symbols spread over the alphabet.

    `oracle_accuracy` is how often the HMM's exact likelihood prefers the good row (ties half):
    the ceiling for any model. As p(x) = p(x_-t) p(x_t | x_-t) and the pair shares x_-t, the
    likelihoods compare as the two conditionals do, which stays exact when the bad one is 0
    (where a log-likelihood would be -inf).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} leaves no symbol to replace; it must be at least 2")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break={tie_break!r} is not one of {TIE_BREAKS}")
    rng = np.random.default_rng([hmm.spec.seed, _PAIRS_STREAM, seed])
    good_NT = hmm.sample(rng, num_pairs, seq_len - 1)
    t_N = rng.integers(0, seq_len - 1, size=num_pairs)
    u_NV = rng.random((num_pairs, hmm.spec.num_symbols))
    rows = np.arange(num_pairs)
    p_NV = conditional_symbol_probs(hmm, good_NT, t_N)
    original_N = good_NT[rows, t_N]
    p_good_N = p_NV[rows, original_N]
    p_NV[rows, original_N] = np.inf  # never "replace" a symbol by itself
    tied_NV = p_NV == p_NV.min(-1, keepdims=True)
    # argmax takes the first maximum: the lowest tied id, or the tied id with the largest draw.
    bad_symbol_N = (tied_NV if tie_break == "lowest" else np.where(tied_NV, u_NV, -1.0)).argmax(-1)
    bad_NT = good_NT.copy()
    bad_NT[rows, t_N] = bad_symbol_N
    oracle = _wins(p_good_N, p_NV[rows, bad_symbol_N])
    return hmm_rows(good_NT), hmm_rows(bad_NT), oracle


def hmm_unigram_accuracy(hmm: HMM, good_rows: Rows, bad_rows: Rows) -> float:
    """Minimal-pair accuracy of token frequencies alone (the HMM's marginal): the floor to beat.

    A model that learned only which symbols are common scores about this, so a model's accuracy
    says something about context only above it.
    """
    good_NL, bad_NL = good_rows["tokens"], bad_rows["tokens"]
    n, t_N = np.arange(len(good_NL)), (good_NL != bad_NL).argmax(1)
    with np.errstate(divide="ignore"):  # a symbol no state emits: log 0 = -inf, still comparable
        log_p_V = np.log(hmm.marginal(good_NL.shape[1] - 1))
    return _wins(log_p_V[good_NL[n, t_N] - NUM_SPECIAL], log_p_V[bad_NL[n, t_N] - NUM_SPECIAL])


def _text_rows(tokenizer: Encoder, texts: Sequence[str], seq_len: int) -> tuple[Rows, int]:
    """([BOS, ids...] rows cut to `seq_len` and padded with id 0 / segment 0, number cut)."""
    tokens = np.zeros((len(texts), seq_len), np.int32)
    length_N = np.zeros(len(texts), np.int32)
    cut = 0
    for i, ids in enumerate(tokenizer.encode(list(texts))):
        row = [BOS_ID, *ids]
        cut += len(row) > seq_len
        length_N[i] = min(len(row), seq_len)
        tokens[i, : length_N[i]] = row[:seq_len]
    real_NL = np.arange(seq_len)[None, :] < length_N[:, None]
    rows = {
        "tokens": tokens,
        "segment_ids": real_NL.astype(np.int32),
        "positions": np.where(real_NL, np.arange(seq_len, dtype=np.int32), 0).astype(np.int32),
    }
    return rows, cut


def blimp_paradigms(data_dir: str | None = None) -> list[str]:
    """The names of the BLiMP configs TFDS knows (its 67 paradigms); needs no prepared data."""
    import tensorflow_datasets as tfds

    with no_stray_temp_folders():
        return sorted(tfds.builder("blimp", data_dir=data_dir or None).builder_configs)


def blimp_minimal_pairs(
    tokenizer: Encoder,
    *,
    data_dir: str,
    seq_len: int,
    max_pairs: int | None = None,
    phenomena: Sequence[str] | None = None,
) -> dict[str, tuple[Rows, Rows]]:
    """BLiMP paradigm -> (good rows, bad rows), at most `max_pairs` pairs per paradigm, in TFDS order.

    `phenomena` names BLiMP configs (e.g. "adjunct_island"); None means all of them. Data is
    read with `tfds.data_source`, so each config must be prepared as array_record in
    `data_dir`; nothing is downloaded. Rows are `[<bos>, ids...]` truncated to `seq_len` (a
    warning says how many were cut; BLiMP sentences are short).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ConfigError("BLiMP needs TensorFlow Datasets: pip install tensorflow-datasets") from e
    known = blimp_paradigms(data_dir)
    names = known if phenomena is None else list(phenomena)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError(f"BLiMP has no paradigm(s) {unknown}; it has {known}")
    hint = f"tfds build blimp --data_dir={data_dir} --file_format=array_record"
    out = {}
    for name in names:
        try:
            with no_stray_temp_folders():
                source = tfds.data_source(
                    f"blimp/{name}", split="train", data_dir=data_dir or None, download=False
                )
        except Exception as e:  # TFDS raises several types for "not prepared / wrong format"
            raise ConfigError(
                f"BLiMP paradigm {name!r} is not prepared as array_record in {data_dir!r}: on a "
                f"machine with internet run `{hint}` (all 67 paradigms; `blimp/{name}` builds this "
                "one alone), then copy the folder here"
            ) from e
        n = len(source) if max_pairs is None else min(max_pairs, len(source))
        examples = [source[i] for i in range(n)]
        texts = {key: [_text(ex[key]) for ex in examples] for key in ("sentence_good", "sentence_bad")}
        good, cut_good = _text_rows(tokenizer, texts["sentence_good"], seq_len)
        bad, cut_bad = _text_rows(tokenizer, texts["sentence_bad"], seq_len)
        if cut_good or cut_bad:
            cut = max(cut_good, cut_bad)
            log.warning("BLiMP %s: %d of %d pairs cut to seq_len=%d", name, cut, n, seq_len)
        out[name] = (good, bad)
    return out


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
