"""BERT: the shared Transformer as a bidirectional encoder, trained as a masked language model.

python -m train.main --config configs/bert.py:tiny --workdir runs/bert
python -m train.main --config configs/bert.py:tiny --workdir runs/bert40 --config.mlm.rate=0.4
"""

from configs import base


def get_config(variant: str | None = None):
    c = base.apply_variant(base.get_config(), variant)
    c.objective = "mlm"
    c.mask = "bidirectional"
    return c
