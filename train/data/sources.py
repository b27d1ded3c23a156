"""Datasets by name (`config.dataset`): a resumable train stream, fixed eval batches, references.

- `hmm`: the embedded synthetic corpus (below), with exact optima as references;
- `seq2seq:copy|reverse|sort`: synthetic seq2seq tasks (train/data/seq2seq_tasks.py);
- `span:BASE`: T5 span corruption of any of the others (train/data/span_corruption.py);
- `text:GLOB`: local UTF-8 files; `tfds:NAME[/CONFIG]`: a prepared TFDS dataset. Both go
  through the shared tokenizer and packed pipeline of `train/data/pipeline.py`; TFDS is
  imported only inside its branch, so `import train` never pulls TensorFlow in.

Every batch is a dict of int32 numpy arrays `[B, L]`: `tokens`, `segment_ids` (0 = padding) and
`positions` (restarting at 0 for each document), for the rows this process feeds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from train.data.hmm import HMM, HMMSpec
from train.data.indexed import IndexedBatches
from train.tokenizer.vocab import BOS_ID, DEFAULT, NUM_SPECIAL, SymbolTokenizer

# Shared by every run on the same HMM, so the eval set never depends on the training seed.
_EVAL_STREAM = 0xE7A1


def hmm_rows(symbols_NT: np.ndarray) -> dict[str, np.ndarray]:
    """Rows [BOS, x_1 .. x_T] (token id = symbol + NUM_SPECIAL): one document filling each row."""
    N, T = symbols_NT.shape
    tokens = np.concatenate([np.full((N, 1), BOS_ID), symbols_NT + NUM_SPECIAL], 1)
    return {
        "tokens": tokens.astype(np.int32),
        "segment_ids": np.ones((N, T + 1), np.int32),
        "positions": np.broadcast_to(np.arange(T + 1, dtype=np.int32), (N, T + 1)).copy(),
    }


@dataclasses.dataclass
class HMMSource:
    """The embedded synthetic corpus: sequences sampled from a hidden Markov model, with the exact
    optima (forward-backward) that `gap` and `captured` are measured against."""

    spec: HMMSpec
    seq_len: int
    batch_size: int
    eval_sequences: int
    stream_seed: int

    def __post_init__(self):
        self.hmm = HMM(self.spec)
        self.specials = DEFAULT  # the corpus's symbols follow the default specials
        self.vocab_size = NUM_SPECIAL + self.spec.num_symbols
        self.tokenizer = SymbolTokenizer(self.vocab_size)
        self._eval_symbols = self.hmm.sample(
            np.random.default_rng([self.spec.seed, _EVAL_STREAM]), self.eval_sequences, self.seq_len - 1
        )

    def rows(self, symbols_NT: np.ndarray) -> dict[str, np.ndarray]:
        return hmm_rows(symbols_NT)

    def train_batch(self, index: int) -> dict[str, np.ndarray]:
        """Global batch `index`: a pure function of (HMM seed, run seed, index)."""
        rng = np.random.default_rng([self.spec.seed, self.stream_seed, index])
        return self.rows(self.hmm.sample(rng, self.batch_size, self.seq_len - 1))

    def train_iterator(self, process_index: int = 0, process_count: int = 1) -> IndexedBatches:
        return IndexedBatches(self.train_batch, self.batch_size, process_index, process_count)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        """The whole eval set as global batches; the last one is padded with segment-0 rows."""
        rows = self.rows(self._eval_symbols)
        n_batches = -(-self.eval_sequences // self.batch_size)
        pad = n_batches * self.batch_size - self.eval_sequences
        rows = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in rows.items()}
        return [
            {k: v[i * self.batch_size : (i + 1) * self.batch_size] for k, v in rows.items()}
            for i in range(n_batches)
        ]

    def reference_losses(self, objective: str, tokens_NL: np.ndarray, scored_NL: np.ndarray):
        """Exact optimum and unigram loss over the scored tokens of the eval rows."""
        real = tokens_NL[:, 0] == BOS_ID  # drops padding rows
        x_NT = tokens_NL[real, 1:] - NUM_SPECIAL
        scored_NT = scored_NL[real, 1:]
        if objective == "clm":
            nll_NT = self.hmm.clm_nll(x_NT)
        elif objective == "mlm":
            nll_NT = self.hmm.mlm_nll(x_NT, scored_NT)
        else:
            raise ValueError(f"no HMM oracle for objective {objective!r}")
        unigram_NT = -np.log(self.hmm.marginal(x_NT.shape[1])[x_NT])
        return {
            "oracle_loss": float(nll_NT[scored_NT].mean()),
            "unigram_loss": float(unigram_NT[scored_NT].mean()),
        }


def make_source(config: Any, workdir: str, process_index: int = 0, process_count: int = 1) -> Any:
    """The dataset of `config.dataset`. Real-text sources keep their tokenizer in `workdir`; the
    process index and count matter only to a per-host text cache (`data_cache_per_host`)."""
    name = config.dataset
    if name.startswith("seq2seq:"):
        from train.data.seq2seq_tasks import Seq2SeqTaskSource

        s = config.seq2seq
        return Seq2SeqTaskSource(
            task=name.partition(":")[2],
            num_symbols=s.num_symbols,
            min_len=s.min_len,
            max_len=s.max_len,
            seq_len=config.seq_len,
            batch_size=config.batch_size,
            eval_lengths=tuple(s.eval_lengths),
            eval_examples=s.eval_examples,
            stream_seed=config.seed,
        )
    if name.startswith("span:"):
        import ml_collections

        from train.data.span_corruption import SpanCorruptionSource

        base_config = ml_collections.ConfigDict(config.to_dict())
        base_config.dataset = name.partition(":")[2]
        base = make_source(base_config, workdir, process_index, process_count)
        s = config.seq2seq
        return SpanCorruptionSource(base, config.seq_len, s.noise_density, s.mean_span, config.seed)
    if name.startswith(("text:", "tfds:")):
        from train.data import pipeline

        build = pipeline.text_source if name.startswith("text:") else pipeline.tfds_source
        return build(config, workdir, process_index, process_count)
    if name == "hmm":
        h = config.hmm
        spec = HMMSpec(
            num_states=h.num_states,
            num_symbols=h.num_symbols,
            transition_support=h.transition_support,
            emission_support=h.emission_support,
            concentration=h.concentration,
            seed=h.seed,
        )
        return HMMSource(spec, config.seq_len, config.batch_size, h.eval_sequences, config.seed)
    raise ValueError(
        f"dataset={name!r}: use 'hmm', 'text:GLOB', 'tfds:NAME[/CONFIG]', 'seq2seq:TASK' or 'span:BASE'"
    )
