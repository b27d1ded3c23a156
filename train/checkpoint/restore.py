"""Reading one checkpoint step folder: the one restore path of the trainer and of inference.

`restore_step(folder, target, expect=...)` reads the identity, compares it with the run's,
restores the arrays of `target` onto the shardings `target` carries (all of the train state for
a resume; only parameters, model state and step for inference, which never reads the
optimizer state), reads the loop's position, and verifies every array it read against the
checksums saved with it. It raises `CheckpointMismatch` for a checkpoint of another run and
`CheckpointDamaged` for one that does not read, does not fit, or fails its checksums.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from train.checkpoint.fingerprint import changed_arrays, fingerprint
from train.checkpoint.format import LoopState, format_version, without_format


class CheckpointMismatch(ValueError):
    """The checkpoint was written by a different model, objective, mask or dataset."""


class CheckpointDamaged(CheckpointMismatch):
    """A checkpoint that does not restore or does not verify; `problem` says how."""

    def __init__(self, folder: str, problem: str, message: str = ""):
        self.folder, self.problem = folder, problem
        super().__init__(message or f"the checkpoint {folder} is damaged: {problem}")


@dataclasses.dataclass(frozen=True)
class Restored:
    """What one step folder held."""

    step: int
    state: Any  # `target`'s structure, filled
    data: dict | None  # the data iterator's position; None for a partial restore
    loop_state: LoopState


def identity_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Fields that differ between two nested identity dicts, as 'a.b: saved -> current'."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return out


def _read_json(folder: str, item: str) -> Any:
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(folder, item))


def _saved_identity(folder: str) -> dict[str, Any]:
    """The identity item as saved (with the layout version); `CheckpointDamaged` if it does not read."""
    try:
        return _read_json(folder, "identity")
    except Exception as e:
        raise CheckpointDamaged(
            folder, f"the identity does not read: {type(e).__name__}: {str(e)[:300]}"
        ) from e


def read_identity(folder: str) -> dict[str, Any]:
    """The run identity a step folder was written by."""
    return without_format(_saved_identity(folder))


def check_identity(folder: str, saved: dict[str, Any], expect: dict[str, Any]) -> None:
    diff = identity_diff(saved, expect)
    if diff:
        raise CheckpointMismatch(
            f"the checkpoint {folder} was written by a different run:\n  - "
            + "\n  - ".join(diff)
            + "\nuse the config that wrote it, or a new --workdir for a new run"
        )


def _read_state(folder: str, target: Any, partial: bool) -> Any:
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype), target
    )
    args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=partial)
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(folder, "state"), args=args)


def restore_step(folder: str, target: Any, *, expect: dict | None, partial: bool = False) -> Restored:
    """Step folder `folder` restored onto `target` (ShapeDtypeStructs carrying shardings).

    `expect`: the identity the checkpoint must have (None: any). `partial`: `target` holds only
    some of the state's fields (the rest is never read) and the data position is not read."""
    saved_identity = _saved_identity(folder)
    if expect is not None:
        check_identity(folder, without_format(saved_identity), expect)
    version = format_version(folder, saved_identity)
    try:
        state = _read_state(folder, target, partial)
        progress = _read_json(folder, "progress") if version >= 2 else {}
        data = None if partial else _read_json(folder, "data")
    except Exception as e:
        problem = f"it does not restore: {type(e).__name__}: {str(e)[:300]}"
        raise CheckpointDamaged(folder, problem) from e
    bad = changed_arrays(progress.get("fingerprint", {}), fingerprint(state))
    if bad:
        problem = f"{len(bad)} arrays differ from the checksums saved with them ({', '.join(bad[:3])} ...)"
        raise CheckpointDamaged(folder, problem)
    step = int(state["step"] if isinstance(state, dict) else state.step)
    return Restored(step, state, data, LoopState.from_json(progress))
