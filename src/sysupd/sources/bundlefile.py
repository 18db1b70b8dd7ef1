"""An offline bundle in a file on this machine: an upload, or ``sysupd install FILE``.

Invariants: only a regular file is read (a FIFO, device or directory is refused before any
read), opened without following the caller's buffering; the file is never changed or removed
here (the caller owns it).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sysupd.errors import AcquireError
from sysupd.sources.base import Acquired, DeviceView, Log

__all__ = ["BundleFile"]


@dataclass(frozen=True, slots=True)
class BundleFile:
    """The bundle at ``path``; ``label`` says what it is for people (default: the path)."""

    path: Path
    description: str = ""
    local: ClassVar[bool] = True
    """A file here: nothing to download."""

    @property
    def label(self) -> str:
        """What the file is, for the update's log."""
        return self.description or str(self.path)

    @contextlib.contextmanager
    def open(self, device: DeviceView, log: Log) -> Iterator[Acquired]:
        """The file, unbuffered (the engine reads large blocks itself).

        Raises:
            AcquireError: it does not exist, cannot be opened, or is not a regular file.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise AcquireError(f"{self.path} does not exist") from exc
        except OSError as exc:
            raise AcquireError(f"cannot open {self.path}: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise AcquireError(f"{self.path} is not a regular file, so it is not a bundle")
        with os.fdopen(fd, "rb", buffering=0) as file:
            yield Acquired(file, str(self.path))
