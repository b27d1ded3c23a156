"""GPT: the shared Transformer as a causal decoder, trained as a left-to-right language model.

python -m train.main --config configs/gpt.py:tiny --workdir runs/gpt
python -m train.main --config configs/gpt.py:small --workdir runs/gpt_small --config.seed=1
"""

from configs import base


def get_config(variant: str | None = None):
    c = base.apply_variant(base.get_config(), variant)
    c.objective = "clm"
    c.mask = "causal"
    return c
