"""`ConfigError`: a config that cannot work. A leaf module, so every layer can raise it.

Model config classes raise it from their own checks, the run checks (`train/config_checks.py`)
collect those messages with their own, and the data modules raise it for bad data settings;
`train.main` turns it into exit status 2 before anything compiles.
"""

from __future__ import annotations

from collections.abc import Sequence


class ConfigError(ValueError):
    """A config that cannot work. Each message names the field and the fix."""

    def __init__(self, errors: str | Sequence[str]):
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        if len(self.errors) == 1:
            super().__init__(self.errors[0])
        else:
            super().__init__("invalid config:\n  - " + "\n  - ".join(self.errors))


def nonpositive(config: object, fields: Sequence[str]) -> list[str]:
    """One message per `model.<field>` of a model config that is not positive."""
    return [f"model.{f}={getattr(config, f)} must be positive" for f in fields if getattr(config, f) <= 0]


def check(errors: Sequence[str]) -> None:
    """Raises one `ConfigError` listing every message in `errors`, if there is any."""
    if errors:
        raise ConfigError(errors)
