"""Orbax checkpoints: train state, data position and the run's identity, written atomically.

Orbax writes each step into a temporary folder and renames it only once every item is on disk,
so a process killed mid-write leaves no step that `latest_step()` would return; the leftovers
are removed on the next start. Saves are asynchronous: training goes on while they are written.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
    """The workdir's checkpoint was written by a different model or objective."""


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


class Checkpointer:
    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                cleanup_tmp_directories=True,
                enable_async_checkpointing=True,
            ),
            item_names=("state", "data", "identity", "progress"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, identity: dict, progress: dict) -> None:
        """`progress`: the loop's host-side position (metrics of the log window in progress, the
        non-finite watch's count), so a run resumed from any step logs exactly the same lines."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                identity=ocp.args.JsonSave(identity),
                progress=ocp.args.JsonSave(progress),
            ),
        )

    def read_identity(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(identity=ocp.args.JsonRestore()))[
            "identity"
        ]

    def restore(self, step: int, abstract_state: Any, identity: dict) -> tuple[Any, dict, dict]:
        """Restores onto the shardings of `abstract_state`, after checking the run's identity."""
        diff = identity_diff(self.read_identity(step), identity)
        if diff:
            raise CheckpointMismatch(
                f"the checkpoint in {self.directory} (step {step}) is from a different run:\n  - "
                + "\n  - ".join(diff)
                + "\nuse a new --workdir, or the config that wrote it"
            )
        items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        # Checkpoints written before `progress` existed are log-aligned: an empty window.
        has_progress = os.path.isdir(os.path.join(self.directory, str(step), "progress"))
        if has_progress:
            items["progress"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["data"], restored["progress"] if has_progress else {}

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
