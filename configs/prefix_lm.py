"""Prefix LM (T5's): the shared Transformer with a bidirectional prefix and a causal rest.

Each training row is split at a random point; only the tokens after the split are predicted.
Same model, data and optimizer as configs/gpt.py and configs/bert.py: only the objective and
the mask differ.

python -m train.main --config configs/prefix_lm.py:tiny --workdir runs/prefix_lm
"""

from configs import base


def get_config(variant: str | None = None):
    c = base.apply_variant(base.get_config(), variant)
    c.objective = "prefix_lm"
    c.mask = "prefix"
    return c
