"""Hybrid GPT-BERT (Charpentier & Samuel 2024): causal rows and masked next-token rows mixed.

A `hybrid.causal_fraction` share of each batch's rows is trained as a causal LM; the other rows
are masked as for BERT (mlm.*), attend bidirectionally, and predict each masked token from the
position before it. Evaluated in its causal view (comparable with GPT); `experiments.compare`
also scores its masked view. Only the objective and the mask differ from configs/gpt.py.

python -m train.main --config configs/hybrid.py:tiny --workdir runs/hybrid
python -m train.main --config configs/hybrid.py:tiny --workdir runs/hybrid_1to7 \
    --config.hybrid.causal_fraction=0.125
"""

import ml_collections

from configs import base


def get_config(variant: str | None = None):
    c = base.apply_variant(base.get_config(), variant)
    c.objective = "hybrid"
    c.mask = "prefix"
    # The share of rows trained causally; the rest use mlm.* masking.
    c.hybrid = ml_collections.ConfigDict(dict(causal_fraction=0.5))
    return c
