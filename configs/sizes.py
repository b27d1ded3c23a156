"""Every model size of the project in one table: the block shapes that the config variants
(configs/base.py), the experiment presets (experiments/common.py) and the tests' micro runs
(tests/conftest.py) take. A size is the stack's shape only; sequence length, batch and schedule
belong to whoever trains it.

| size    | layers | d_model | heads | mlp_dim | used by                                       |
|---------|--------|---------|-------|---------|-----------------------------------------------|
| micro   | 2      | 32      | 2     | 64      | the tests' real training processes (seconds)  |
| cpu     | 2      | 64      | 4     | 256     | the experiments' `cpu` preset                 |
| tiny    | 4      | 128     | 4     | 512     | the `tiny` variant (the quick start)          |
| small   | 6      | 512     | 8     | 2048    | the `small` variant, the experiments' `gpu`   |
| base    | 12     | 768     | 12    | 3072    | `base`, `gpt2` (GPT-2 124M), `bert_base`      |
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Size:
    """The shape of the Transformer stack."""

    num_layers: int
    d_model: int
    num_heads: int
    mlp_dim: int

    def fields(self) -> dict[str, int]:
        """The `model.*` fields, as a config section."""
        return dict(
            num_layers=self.num_layers, d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim
        )

    def overrides(self) -> dict[str, int]:
        """The same fields as dotted overrides (`--config.model.d_model=...`)."""
        return {f"model.{k}": v for k, v in self.fields().items()}


SIZES: dict[str, Size] = {
    "micro": Size(2, 32, 2, 64),
    "cpu": Size(2, 64, 4, 256),
    "tiny": Size(4, 128, 4, 512),
    "small": Size(6, 512, 8, 2048),
    "base": Size(12, 768, 12, 3072),
}
