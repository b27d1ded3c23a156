"""What a checkpoint step folder holds, and which version of that layout a folder is.

A step folder `checkpoints/<step>/` has one Orbax item per sub-folder:
- `state`: the `TrainState` arrays (parameters, optimizer state, step, RNG key);
- `data`: the data iterator's position (JSON);
- `identity`: what the checkpoint must match to be resumed or loaded (model shapes, objective,
  mask, dataset; `train.loop.build.run_identity`), plus the layout's version under `format`;
- `progress`: the loop's host-side position (`LoopState`) and the state's checksums.

The version is stored with the identity from version 3 on; folders written before that are
told apart once, here, by the items they hold.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

ITEMS = ("state", "data", "identity", "progress")
FORMAT_KEY = "format"
# 1: state, data, identity. 2: + progress (the log window, the non-finite count; checksums from
# some point on). 3: checksums always, and the version stored in the identity.
FORMAT_VERSION = 3


@dataclasses.dataclass
class LoopState:
    """The loop's position that is not in the train state, saved as the `progress` item so a run
    resumed from any step logs exactly the lines an uninterrupted one logs: the metrics of the
    log window in progress and the non-finite guard's count of skipped steps in a row."""

    window: list[dict[str, float]] = dataclasses.field(default_factory=list)
    skipped_in_a_row: int = 0

    def to_json(self, fingerprint: dict[str, int]) -> dict[str, Any]:
        return {"window": self.window, "skipped_in_a_row": self.skipped_in_a_row, "fingerprint": fingerprint}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> LoopState:
        return cls(list(saved.get("window", [])), int(saved.get("skipped_in_a_row", 0)))


def is_step_folder(path: str) -> bool:
    """A committed step folder (Orbax renames a step's temporary folder only once complete)."""
    return os.path.isdir(os.path.join(path, "state")) and os.path.isdir(os.path.join(path, "identity"))


def format_version(step_folder: str, saved_identity: dict[str, Any]) -> int:
    """The layout version of a step folder whose identity item reads `saved_identity`."""
    if FORMAT_KEY in saved_identity:
        return int(saved_identity[FORMAT_KEY])
    return 2 if os.path.isdir(os.path.join(step_folder, "progress")) else 1


def with_format(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity item as saved: the run's identity and this layout's version."""
    return {**identity, FORMAT_KEY: FORMAT_VERSION}


def without_format(saved_identity: dict[str, Any]) -> dict[str, Any]:
    """The run identity in a saved identity item (what is compared with the current run's)."""
    return {k: v for k, v in saved_identity.items() if k != FORMAT_KEY}
