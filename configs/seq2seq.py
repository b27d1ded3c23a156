"""Encoder-decoder (T5-style) from the shared block, trained on a seq2seq task.

The encoder is the shared Transformer under a bidirectional mask, the decoder the same blocks
under a causal mask plus cross-attention (models/encoder_decoder.py); the LSTM baselines of
claim C11 are `model.arch=lstm_seq2seq` (fixed-vector bottleneck) and `lstm_attention`.
Datasets: `seq2seq:copy|reverse|sort` (synthetic, train/data/seq2seq_tasks.py) or `span:BASE`,
T5 span corruption of any language-modelling dataset (`span:hmm`, `span:text:GLOB`, ...).
`model.num_layers` counts the layers of each stack.

python -m train.main --config configs/seq2seq.py:tiny --workdir runs/seq2seq
python -m train.main --config configs/seq2seq.py:tiny --workdir runs/span --config.dataset=span:hmm
python -m train.main --config configs/seq2seq.py:tiny --workdir runs/lstm \\
    --config.model.arch=lstm_seq2seq --config.model.d_model=160 --config.model.num_layers=1
"""

import ml_collections

from configs import base


def get_config(variant: str | None = None):
    c = base.apply_variant(base.get_config(), variant)
    c.objective = "seq2seq"
    c.mask = "causal"  # the decoder's self-attention; the encoder is always bidirectional
    c.model.arch = "encdec"
    c.dataset = "seq2seq:copy"
    c.seq2seq = ml_collections.ConfigDict(
        dict(
            num_symbols=32,  # synthetic tasks: source alphabet
            min_len=8,  # synthetic tasks: source lengths drawn uniformly in [min_len, max_len]
            max_len=64,
            eval_lengths=(8, 16, 32, 64),  # the eval set: eval_examples sources of each length
            eval_examples=128,
            noise_density=0.15,  # span corruption: share of tokens dropped into the target
            mean_span=3.0,
            share_embeddings=True,  # encoder-decoder: one embedding for source, target and head
        )
    )
    # Half the layers per stack, so encoder + decoder have the depth of the variant's GPT.
    c.model.num_layers = max(1, c.model.num_layers // 2)
    # Rows fit the longest source plus BOS and EOS, not the LM variant's length.
    c.seq_len = c.model.max_len = c.seq2seq.max_len + 2
    return c
