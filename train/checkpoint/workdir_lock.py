"""One run per workdir: an OS file lock held by the chief process while it trains.

`fcntl.flock` on `WORKDIR/.lock`: the kernel releases it when the process exits, however it
exits (a SIGKILLed run leaves no stale lock). A second launcher in the same workdir fails
before building anything, naming the host and pid that hold it. Only process 0 of a run takes
it, so the processes of one multi-process run are not refused. On a filesystem whose locks do
not work across machines (some network and FUSE mounts) two launchers on different hosts are
not stopped: see docs/scale.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator

from models.errors import ConfigError


class WorkdirBusy(ConfigError):
    """Another live process trains in this workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True) -> Iterator[None]:
    """Context manager: holds an exclusive lock on WORKDIR/.lock (released by the OS if the process
    dies); `WorkdirBusy` naming the holder when another run has it."""
    if not enabled:
        yield
        return
    path = os.path.join(workdir, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirBusy(
                f"{workdir} is in use by {holder}: one run per workdir. Wait for it to finish, stop "
                "it (rerunning the same command then resumes), or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
