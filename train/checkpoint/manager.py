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
from typing import Any

import orbax.checkpoint as ocp

from train.checkpoint.fingerprint import fingerprint
from train.checkpoint.format import ITEMS, LoopState, with_format
from train.checkpoint.restore import CheckpointDamaged, Restored, restore_step

log = logging.getLogger(__name__)


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


class Checkpointer:
    """A run's `checkpoints/` folder: asynchronous atomic saves of the train state, the data
    position, the run's identity and the loop's position (train/checkpoint/format.py), and the
    resume from the newest step that restores and verifies (train/checkpoint/restore.py)."""

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
            item_names=ITEMS,
        )
        self._pending: int | None = None  # a save handed to Orbax and not known to be committed

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_folder(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: Any, data_state: dict, identity: dict, loop_state: LoopState) -> None:
        """Hands step `step` to Orbax; it is committed in the background (`wait` to be sure)."""
        self.wait()  # Orbax would wait here anyway (one save at a time); this names a failed one
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    identity=ocp.args.JsonSave(with_format(identity)),
                    progress=ocp.args.JsonSave(loop_state.to_json(fingerprint(state))),
                ),
            )
        except Exception as e:
            raise self._write_failed(step, e) from e
        self._pending = step

    def restore_newest_intact(self, target: Any, identity: dict) -> Restored | None:
        """The newest checkpoint that restores onto `target` and verifies. Each damaged one is
        moved, never deleted, to `checkpoints/damaged/<step>` with a warning, and the next older
        one is tried. None if the workdir holds no checkpoint; `CheckpointMismatch` if the newest
        is another run's; `CheckpointDamaged` if none is intact."""
        tried = []
        while (step := self.latest_step()) is not None:
            try:
                return restore_step(self.step_folder(step), target, expect=identity)
            except CheckpointDamaged as e:
                problem = e.problem
            tried.append(f"step {step}: {problem}")
            where = self._move_aside(step)
            log.warning(
                "checkpoint step %d is damaged (%s); moved to %s, trying the one before", step, problem, where
            )
        if tried:
            damaged = os.path.join(self.directory, "damaged")
            raise CheckpointDamaged(
                self.directory,
                "no intact step",
                f"no checkpoint in {self.directory} restores and verifies; each was moved to {damaged}:"
                "\n  - " + "\n  - ".join(tried) + "\nthe run does not start from scratch over them: "
                "restore a copy, or use a new --workdir",
            )
        return None

    def _move_aside(self, step: int) -> str:
        damaged = os.path.join(self.directory, "damaged")
        os.makedirs(damaged, exist_ok=True)
        target, n = os.path.join(damaged, str(step)), 1
        while os.path.exists(target):
            target, n = os.path.join(damaged, f"{step}.{n}"), n + 1
        os.rename(self.step_folder(step), target)
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
