"""One process per run folder: an exclusive OS file lock that dies with the process holding it.

The lock is ``fcntl.flock`` on ``RUN/.vimtune.lock``. The kernel drops it when the holder exits,
however it exits (``kill -9`` included), so a killed run never leaves a stale lock behind; the
empty lock file itself means nothing. A forked child (a data-loader worker) shares the lock's open
file, so each child closes its copy at once: otherwise workers orphaned by a killed run would hold
the lock until they noticed their parent had gone.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".vimtune.lock"

#: Lock descriptors this process holds; a forked child closes its copies of them.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLockedError(RuntimeError):
    """Another process is using the run folder."""


def _lock_or_refuse(fd: int, mode: int, refusal: str) -> None:
    """Take the ``flock`` ``mode`` (``LOCK_EX`` or ``LOCK_SH``) on ``fd`` without waiting, or raise
    :class:`RunLockedError` with ``refusal`` when another process's lock is in the way."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunLockedError(refusal) from None


@contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold the run folder ``root`` (which must exist) for the ``with`` block.

    Raises:
        RunLockedError: another process holds it (at once: no waiting).
    """
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _lock_or_refuse(fd, fcntl.LOCK_EX, f"run folder '{root}' is in use by another vimtune process (training or "
                        "resuming it); wait for that process to finish or stop it, or choose another --output-dir")
        _HELD.add(fd)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock


def refuse_if_in_use(root: Path) -> None:
    """Raise :class:`RunLockedError` when a live process holds ``root``'s lock (the run is being trained).

    For readers of a run (``eval``, ``predict``, ``viz``): a shared lock is tried on the existing
    lock file and dropped at once; a folder without one has never been trained and is free.
    """
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        _lock_or_refuse(fd, fcntl.LOCK_SH, f"run folder '{root}' is being trained by a live vimtune process (it holds "
                        "the run's lock): its weights and metrics are half-written, so they are not read; wait for "
                        "that process to finish, or stop it")
    finally:
        os.close(fd)
