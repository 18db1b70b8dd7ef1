"""What every benchmark here needs: killing children, random files, the sysupd command."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

_COPY_BYTES = 1024 * 1024

__all__ = [
    "BenchError",
    "kill_group",
    "preallocate",
    "remove",
    "sysupd_command",
    "warm",
    "write_random",
]


class BenchError(Exception):
    """The benchmark cannot go on."""


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def preallocate(path: Path, size: int) -> None:
    """A fresh regular file of ``size`` allocated bytes (like a partition, but a file)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Delete a file or a tree, if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def sysupd_command() -> list[str]:
    """The ``sysupd`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("sysupd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sysupd"]


def warm(path: Path) -> None:
    """Read ``path`` to its end, so its pages are cached for the next contender."""
    buffer = bytearray(_COPY_BYTES)
    with path.open("rb", buffering=0) as source:
        while source.readinto(buffer):
            pass


def write_random(path: Path, size: int) -> None:
    """``size`` random (incompressible) bytes."""
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(_COPY_BYTES, left))
            out.write(block)
            left -= len(block)
