"""The update lock: one update at a time across processes (the service and ``sysupd install``).

An exclusive ``flock`` on ``<state_dir>/update.lock``; the kernel drops it when the holder dies,
so a crash never leaves the lock held.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from sysupd.errors import UpdateBusy

__all__ = ["UpdateLock"]


class UpdateLock:
    """An exclusive lock, as a context manager: refused at once when held (installs), or waited
    for (``blocking``: the boot bookkeeping, which must not race an install)."""

    def __init__(self, path: Path, *, blocking: bool = False) -> None:
        self._path = path
        self._blocking = blocking
        self._fd: int | None = None

    def __enter__(self) -> UpdateLock:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self._blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise UpdateBusy("Update procedure already running") from exc
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
