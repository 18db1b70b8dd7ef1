"""The uploads of one service: their credentials, and the files in the uploads directory.

``sys/update_now {"file_upload": name}`` finds an uploaded file through ``UploadStore.path_of``.

Invariants:

- An upload is written to a temp file ``.<random>.part`` in the uploads directory (off the event
  loop), hashed on the way, then fsynced and renamed over its final name. A name that exists is
  replaced only by a completed upload; on any failure (refusal, broken connection, full disk,
  service stop) the temp file is removed and every earlier upload is untouched.
- Stored names are bare, safe file names (``core.uploadnames``); temp files start with a dot and
  are never listed or found as uploads.
- An upload stores no more than its ``Budget``: the limit or the free space of the uploads
  filesystem, less a small reserve for the database and the log, whichever is less.
- Uploads are temporary: ``clear`` (called when the service starts) deletes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sysupd.api.upload_grants import UploadGrants
from sysupd.core.uploadnames import check_upload_name
from sysupd.errors import BadRequest, PayloadTooLarge, StateError
from sysupd.fsutil import fsync_dir
from sysupd.servicelog import ServiceLog
from sysupd.system.clock import Clock

__all__ = ["Budget", "StoredUpload", "UploadStore"]

_RESERVE_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Budget:
    """How many bytes one upload may store, and why no more."""

    limit: int
    reason: str


@dataclass(frozen=True, slots=True)
class StoredUpload:
    """A completed upload."""

    name: str
    size: int
    sha256: str


class _PartFile:
    """A temp file in the uploads directory that becomes an upload only by ``commit``.

    ``write`` and ``commit`` run on worker threads; the lock makes ``discard`` (from the event
    loop, e.g. after a cancellation) wait for a write in flight instead of racing it.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".", suffix=".part")
        self.path = Path(name)
        self.size = 0
        self._fd: int | None = fd
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()
        self._committed = False

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of the bytes written so far."""
        return self._hash.hexdigest()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise OSError(errno.EBADF, "the upload was abandoned", str(self.path))
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view) :]
            self._hash.update(chunk)
            self.size += len(chunk)

    def commit(self, target: Path) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                raise OSError(errno.EBADF, "the upload was abandoned", str(self.path))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.path, target)
            self._committed = True
        fsync_dir(target.parent)

    def discard(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if not self._committed:
                with contextlib.suppress(OSError):
                    self.path.unlink(missing_ok=True)


class UploadStore:
    """The upload credentials (``grants``) and the uploaded files of one service."""

    def __init__(self, directory: Path, clock: Clock, log: ServiceLog) -> None:
        self.directory = directory
        self.grants = UploadGrants(clock)
        self._log = log

    def budget(self, max_upload_bytes: int) -> Budget:
        """The most one upload may store now: the limit or the free space, whichever is less.

        Raises:
            OSError: the uploads filesystem cannot be asked.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fs = os.statvfs(self.directory)
        reserve = min(_RESERVE_MAX_BYTES, fs.f_blocks * fs.f_frsize // 100)
        free = max(0, fs.f_bavail * fs.f_frsize - reserve)
        if free < max_upload_bytes:
            return Budget(free, f"only {free} bytes are free for uploads")
        return Budget(max_upload_bytes, f"the upload limit is {max_upload_bytes} bytes")

    async def save(self, name: str, budget: Budget, chunks: AsyncIterator[bytes]) -> StoredUpload:
        """Stream ``chunks`` into a temp file, then make it the upload ``name``.

        Raises:
            PayloadTooLarge: over ``budget``, or the uploads filesystem is full.
            BadRequest: there were no bytes.
            OSError: the file could not be written.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = _PartFile(self.directory)
        try:
            async for chunk in chunks:
                if part.size + len(chunk) > budget.limit:
                    raise PayloadTooLarge(
                        f"the file is larger than {budget.limit} bytes; {budget.reason}"
                    )
                await asyncio.to_thread(part.write, chunk)
            if part.size == 0:
                raise BadRequest("the file is empty")
            await asyncio.to_thread(part.commit, self.directory / name)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise PayloadTooLarge(f"the uploads filesystem is full: {exc.strerror}") from exc
            raise
        finally:
            part.discard()
        return StoredUpload(name, part.size, part.sha256)

    def path_of(self, name: str) -> Path:
        """The path of the uploaded file ``name``.

        Raises:
            ValueError: ``name`` is not a bare, safe file name, or no such file was uploaded.
        """
        problem = check_upload_name(name)
        if problem is not None:
            raise ValueError(f"the file name {name[:100]!r} {problem}")
        path = self.directory / name
        try:
            info = os.lstat(path)
        except OSError as exc:
            raise ValueError(f"no file named {name!r} was uploaded") from exc
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"no file named {name!r} was uploaded")
        return path

    def remove(self, name: str) -> None:
        """Delete the uploaded file ``name`` if it is there.

        Raises:
            ValueError: ``name`` is not a bare, safe file name.
            OSError: it is there but cannot be deleted.
        """
        problem = check_upload_name(name)
        if problem is not None:
            raise ValueError(f"the file name {name[:100]!r} {problem}")
        with contextlib.suppress(FileNotFoundError):
            (self.directory / name).unlink()
            self._log.info(f"upload {name!r} deleted")

    def clear(self) -> None:
        """Delete every upload and temp file; leaves an empty uploads directory.

        Raises:
            StateError: the directory cannot be emptied or created.
        """
        try:
            count = len(self.names())
            if self.directory.is_symlink() or (
                self.directory.exists() and not self.directory.is_dir()
            ):
                self.directory.unlink()
            elif self.directory.exists():
                shutil.rmtree(self.directory)
            self.directory.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise StateError(f"cannot clear the uploads directory {self.directory}: {exc}") from exc
        if count:
            self._log.info(f"deleted {count} uploaded file(s) left from before the start")

    def names(self) -> list[str]:
        """The names of the uploaded files, sorted."""
        try:
            entries = list(os.scandir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            e.name
            for e in entries
            if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
        )
