"""Durable file writes and bounded reads for sysupd's own state files.

Invariants:

- ``atomic_write`` never leaves a partial file at its target: readers see the old content or the
  new content, also after a crash or power cut at any instant. The new bytes go to a temp file in
  the same directory, are fsynced, renamed over the target with ``os.replace`` and the directory
  is fsynced so the rename itself is durable. On any error the temp file is removed and the
  target is untouched.
- ``read_capped`` never reads more than ``max_bytes + 1`` bytes, whatever the file claims to be,
  and never blocks on a FIFO or device: only regular files are read.

Errors are ``OSError`` (``FileTooLargeError`` is one); callers translate them into their own
family (``BootError``, ``StateError``) with the path in the message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["FileTooLargeError", "atomic_write", "fsync_dir", "read_capped"]


class FileTooLargeError(OSError):
    """A file is larger than the caller allows; it was not read."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__(errno.EFBIG, f"larger than the {max_bytes}-byte limit", str(path))
        self.max_bytes = max_bytes


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable.

    Raises:
        OSError: the directory cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` in one durable step; ``mode`` is set exactly (no umask).

    Raises:
        OSError: the directory is not writable, the disk is full, or ``path`` cannot be
            replaced (e.g. it is a directory). The old file is then intact and no temp file is
            left behind.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(directory)


def read_capped(path: Path, max_bytes: int) -> bytes:
    """The whole content of the regular file ``path``, refused if over ``max_bytes``.

    Raises:
        FileTooLargeError: the file is (or grows while read to be) larger than ``max_bytes``.
        OSError: the file is missing, unreadable or not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > max_bytes:
            raise FileTooLargeError(path, max_bytes)
        # st_size may lie (files in /proc say 0), so read to one byte past the cap and check.
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise FileTooLargeError(path, max_bytes)
    return data
