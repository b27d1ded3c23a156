"""Orbax checkpoints: train state, data position and the run's identity, written atomically.

Orbax writes each step into a temporary folder and renames it only once every item is on disk,
so a process killed mid-write leaves no step that `latest_step()` would return; the leftovers
are removed on the next start. Saves are asynchronous: training goes on while they are written,
and a write that fails (disk full, permissions) surfaces at the next save or wait as
`CheckpointWriteError`, naming the step, the directory and the error; older checkpoints are
untouched (Orbax removes old steps only after a new one is committed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
    """The workdir's checkpoint was written by a different model or objective."""


class CheckpointDamaged(CheckpointMismatch):
    """No checkpoint in the workdir restores and verifies (each was moved to `damaged/`)."""


WRITE_FAILED_EXIT = 4  # the run's exit status when it cannot write its files


class CheckpointWriteError(RuntimeError):
    """Writing checkpoint `step` failed; the run cannot go on without saving."""

    def __init__(self, directory: str, step: int, error: BaseException, newest: int | None):
        self.step = step
        kept = "none is complete" if newest is None else f"the newest complete checkpoint is step {newest}"
        super().__init__(
            f"writing checkpoint step {step} in {directory} failed: {type(error).__name__}: "
            f"{str(error)[:500]}\n{kept}, untouched. Free space or fix the permissions of {directory}, "
            "then rerun the same command: it resumes from there"
        )


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
        self._pending: int | None = None  # a save handed to Orbax and not known to be committed

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, identity: dict, progress: dict) -> None:
        """`progress`: the loop's host-side position (metrics of the log window in progress, the
        non-finite watch's count), so a run resumed from any step logs exactly the same lines."""
        self.wait()  # Orbax would wait here anyway (one save at a time); this names a failed one
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    identity=ocp.args.JsonSave(identity),
                    progress=ocp.args.JsonSave(progress),
                ),
            )
        except Exception as e:
            raise self._write_failed(step, e) from e
        self._pending = step

    def read_identity(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(identity=ocp.args.JsonRestore()))[
            "identity"
        ]

    def _check_identity(self, step: int, saved: dict, identity: dict) -> None:
        diff = identity_diff(saved, identity)
        if diff:
            raise CheckpointMismatch(
                f"the checkpoint in {self.directory} (step {step}) is from a different run:\n  - "
                + "\n  - ".join(diff)
                + "\nuse a new --workdir, or the config that wrote it"
            )

    def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restores onto the shardings of `abstract_state` (the identity is checked by the caller)."""
        items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        # Checkpoints written before `progress` existed are log-aligned: an empty window.
        has_progress = os.path.isdir(os.path.join(self.directory, str(step), "progress"))
        if has_progress:
            items["progress"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["data"], restored["progress"] if has_progress else {}

    def restore_newest_intact(
        self, abstract_state: Any, identity: dict, verify: Callable[[Any, dict], str | None]
    ) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data position, progress) of the newest checkpoint that restores and that
        `verify(state, progress)` accepts (None: no problem). Each one that fails is moved,
        never deleted, to `checkpoints/damaged/<step>` with a warning, and the next older one is
        tried. None if the workdir holds no checkpoint; `CheckpointDamaged` if none is intact."""
        tried = []
        while (step := self.latest_step()) is not None:
            try:
                saved_identity = self.read_identity(step)
            except Exception as e:  # an unreadable identity is damage, not another run
                problem = f"the identity does not read: {type(e).__name__}: {str(e)[:300]}"
            else:
                self._check_identity(step, saved_identity, identity)  # another run: not damage
                try:
                    state, data, progress = self._restore(step, abstract_state)
                    problem = verify(state, progress)
                except Exception as e:
                    problem = f"it does not restore: {type(e).__name__}: {str(e)[:300]}"
                if problem is None:
                    return step, state, data, progress
            tried.append(f"step {step}: {problem}")
            where = self._move_aside(step)
            log.warning(
                "checkpoint step %d is damaged (%s); moved to %s, trying the one before", step, problem, where
            )
        if tried:
            raise CheckpointDamaged(
                f"no checkpoint in {self.directory} restores and verifies; each was moved to "
                f"{os.path.join(self.directory, 'damaged')}:\n  - " + "\n  - ".join(tried) + "\nthe run does "
                "not start from scratch over them: restore a copy, or use a new --workdir"
            )
        return None

    def _move_aside(self, step: int) -> str:
        damaged = os.path.join(self.directory, "damaged")
        os.makedirs(damaged, exist_ok=True)
        target, n = os.path.join(damaged, str(step)), 1
        while os.path.exists(target):
            target, n = os.path.join(damaged, f"{step}.{n}"), n + 1
        os.rename(os.path.join(self.directory, str(step)), target)
        self._manager.reload()  # the manager lists steps once; it must forget this one
        return target

    def wait(self) -> None:
        """Blocks until the save in flight is committed; `CheckpointWriteError` if it failed."""
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._write_failed(step, e) from e

    def _write_failed(self, step: int | None, error: Exception) -> CheckpointWriteError:
        newest = None
        try:  # Orbax lists a step when it is handed over; the folders say what was committed
            newest = max((int(d) for d in os.listdir(self.directory) if d.isdigit()), default=None)
            self._manager.close()  # stops its threads, so the exit is not buried in their errors
        except Exception:
            pass
        return CheckpointWriteError(self.directory, step if step is not None else -1, error, newest)

    def close(self) -> None:
        self._manager.close()
