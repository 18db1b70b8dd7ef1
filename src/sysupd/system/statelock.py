"""One service per state directory: two would share the database and the slots, and each would
believe it alone decides what boots next."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sysupd.errors import StateError

__all__ = ["StateLock"]


class StateLock:
    """An exclusive lock on ``<state_dir>/service.lock`` for as long as the service runs; the
    kernel drops it when the process ends, however it ends (and at a re-exec: the descriptor is
    close-on-exec)."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "service.lock"
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StateError(
                f"another sysupd service (pid {holder}) is using {state_dir}; stop it first, "
                "or give this one another --state-dir"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another service use the state directory."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
