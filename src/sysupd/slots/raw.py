"""A slot that is a block device or a regular file: raw images are written to it.

Responsibility: own one inactive raw slot (one of a pair of partitions, or of image files): write
a verified image to it, make it durable, prove it reads back as the signed image, or empty it.

Invariants:

- A raw payload is an uncompressed image, so its signed length equals its installed size and
  its signed SHA-256 is the image's. Specs where they differ are refused.
- Size is checked before the first write: an image larger than the device (or than ``max_bytes``
  for a size-limited file slot) is refused with the slot untouched.
- A block device is opened with ``O_EXCL``: Linux then refuses it while it is mounted or
  otherwise claimed, so the running system's filesystem cannot be overwritten by a wrong setting.
  A regular file is opened with ``O_NOFOLLOW`` and never created: a missing path is an error,
  so a mistyped device name cannot turn into a file on ``/dev``.
- Memory is one reusable buffer; the image is streamed through it, never held whole.
- ``install`` returns only after the image was fsynced and read back (the page cache dropped
  first where the kernel allows) with the signed SHA-256. Once writing started, any failure wipes
  the slot before the error propagates.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import os
import stat
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from sysupd.errors import InstallError, SysupdError, VerificationError
from sysupd.slots.base import PROGRESS_STEP_BYTES, PayloadSpec, expect_end

__all__ = ["WIPE_BYTES", "RawSlot"]

WIPE_BYTES = 1 << 20  # zeroed at the start of a block device by wipe()
_BUFFER_BYTES = 1 << 20  # one reusable copy buffer

_FILE_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_DEVICE_FLAGS = os.O_RDWR | os.O_EXCL | os.O_CLOEXEC


class RawSlot:
    """A block device or regular file that raw images are written to."""

    def __init__(self, name: str, path: Path, *, max_bytes: int | None = None) -> None:
        """``max_bytes`` caps the image size for a regular-file slot (block devices are capped
        by their own size).
        """
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.name = name
        self.path = path
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"RawSlot({self.name!r}, {str(self.path)!r})"

    def install(
        self,
        payload: BinaryIO,
        spec: PayloadSpec,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Write the raw image to the slot, fsync it and check it reads back as signed.

        Raises:
            VerificationError: the payload is not a raw image, or not the signed one.
            InstallError: the image is larger than the slot, or the slot could not be written or
                reads back differently (full disk, I/O error, device in use, bad storage).
            AcquireError: the payload stream could not be read.
        """
        if spec.kind != "raw":
            raise VerificationError(
                f"a {spec.kind} payload cannot go into a raw slot ({self.name})"
            )
        if spec.length != spec.installed_size:
            raise VerificationError(
                f"a raw payload's length ({spec.length}) must equal its installed size"
                f" ({spec.installed_size})"
            )
        fd, is_device = self._open()
        try:
            capacity = self._capacity(fd, is_device)
            if capacity is not None and spec.installed_size > capacity:
                raise InstallError(
                    f"the image ({spec.installed_size} bytes) is larger than slot {self.name}"
                    f" ({capacity} bytes)"
                )
            try:
                self._write_image(fd, is_device, payload, spec, progress)
                self._check_readback(fd, spec)
            except BaseException:
                self._wipe_after_failure(fd, is_device)
                raise
        finally:
            os.close(fd)

    def wipe(self) -> None:
        """Empty the slot: truncate a file to 0 bytes, zero the first MiB of a block device.

        A block device cannot be emptied, and zeroing all of it costs minutes. Zeroing its start
        removes what identifies its content: the partition table, and the superblocks or magic
        numbers of ext2/3/4, XFS, btrfs (primary), squashfs, erofs, FAT and LUKS, all within the
        first MiB. So neither ``blkid``/udev nor a bootloader takes the leftover of an old or
        half-written image for a filesystem. Whether a slot is *installed* is decided by the
        bootloader state, which is switched only after a whole install verified; the wipe makes
        sure a failed slot does not look usable to anything else either.

        Raises:
            InstallError: the slot could not be opened or written.
        """
        fd, is_device = self._open()
        try:
            self._wipe_open(fd, is_device)
        finally:
            os.close(fd)

    # The steps.

    def _open(self) -> tuple[int, bool]:
        """Open the slot for reading and writing; say whether it is a block device.

        Raises:
            InstallError: the path is missing, of another type, or a link to a regular file, or
                the device is in use.
        """
        try:
            found = os.stat(self.path).st_mode  # a device is often reached through a link
        except OSError as exc:
            raise InstallError(f"slot {self.name} ({self.path}) cannot be found: {exc}") from exc
        is_device = stat.S_ISBLK(found)
        if not is_device and not stat.S_ISREG(found):
            raise InstallError(f"slot {self.name} ({self.path}) is not a block device or file")
        try:
            fd = os.open(self.path, _DEVICE_FLAGS if is_device else _FILE_FLAGS)
        except OSError as exc:
            raise InstallError(self._open_failure(exc)) from exc
        try:
            opened = os.fstat(fd).st_mode
        except OSError as exc:
            os.close(fd)
            raise InstallError(f"slot {self.name} ({self.path}) cannot be read: {exc}") from exc
        if stat.S_IFMT(opened) != stat.S_IFMT(found):
            os.close(fd)
            raise InstallError(f"slot {self.name} ({self.path}) was replaced while opened")
        return fd, is_device

    def _open_failure(self, exc: OSError) -> str:
        if exc.errno == errno.ELOOP:
            return f"slot {self.name} ({self.path}) is a symbolic link to a file, not a device"
        if exc.errno == errno.EBUSY:
            return f"slot {self.name} ({self.path}) is in use (mounted?)"
        return f"slot {self.name} ({self.path}) cannot be opened: {exc}"

    def _capacity(self, fd: int, is_device: bool) -> int | None:
        """The most bytes the slot can hold (None: no limit but the filesystem's space)."""
        if not is_device:
            return self.max_bytes
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise self._io_error(exc, "measuring") from exc
        return size if self.max_bytes is None else min(size, self.max_bytes)

    def _write_image(
        self,
        fd: int,
        is_device: bool,
        payload: BinaryIO,
        spec: PayloadSpec,
        progress: Callable[[int], None] | None,
    ) -> None:
        """Stream the payload into the slot from offset 0 and make it durable."""
        buffer = memoryview(bytearray(_BUFFER_BYTES))
        readinto = (
            payload.readinto if isinstance(payload, io.RawIOBase | io.BufferedIOBase) else None
        )
        written = reported = 0
        try:
            if not is_device:
                os.ftruncate(fd, 0)  # no stale tail; and frees the old image's space first
            while True:
                count = _read(payload, readinto, buffer)
                if not count:
                    break
                if written + count > spec.installed_size:
                    raise VerificationError(
                        f"the payload is longer than its signed {spec.installed_size} bytes"
                    )
                _write_all(fd, buffer[:count])
                written += count
                if progress is not None and written - reported >= PROGRESS_STEP_BYTES:
                    reported = written
                    progress(written)
            if written != spec.installed_size:
                raise VerificationError(
                    f"the payload ended after {written} of its signed {spec.installed_size} bytes"
                )
            expect_end(payload, "image")
            if not is_device:
                os.ftruncate(fd, spec.installed_size)
            os.fsync(fd)
        except OSError as exc:
            raise self._io_error(exc, "writing") from exc
        if progress is not None and reported != written:
            progress(written)

    def _check_readback(self, fd: int, spec: PayloadSpec) -> None:
        """Read the image back from the slot and compare its SHA-256 with the signed one."""
        # Drop the cached pages, so the read below comes from the storage where it can; if the
        # kernel will not, only the stronger check is lost and the hash below still runs.
        with suppress(OSError):
            os.posix_fadvise(fd, 0, spec.installed_size, os.POSIX_FADV_DONTNEED)
        buffer = memoryview(bytearray(_BUFFER_BYTES))
        digest = hashlib.sha256()
        offset = 0
        try:
            while offset < spec.installed_size:
                want = min(len(buffer), spec.installed_size - offset)
                count = os.preadv(fd, [buffer[:want]], offset)
                if count == 0:
                    raise InstallError(
                        f"slot {self.name} reads back only {offset} of {spec.installed_size}"
                        " bytes: bad storage?"
                    )
                digest.update(buffer[:count])
                offset += count
        except OSError as exc:
            raise self._io_error(exc, "reading back") from exc
        if not hmac.compare_digest(digest.hexdigest(), spec.sha256.lower()):
            raise InstallError(f"slot {self.name} reads back differently: bad storage?")

    def _wipe_open(self, fd: int, is_device: bool) -> None:
        try:
            if is_device:
                size = os.lseek(fd, 0, os.SEEK_END)
                zeros = bytes(min(WIPE_BYTES, size))
                written = 0
                while written < len(zeros):
                    written += os.pwrite(fd, zeros[written:], written)
            else:
                os.ftruncate(fd, 0)
            os.fsync(fd)
        except OSError as exc:
            raise self._io_error(exc, "wiping") from exc

    def _wipe_after_failure(self, fd: int, is_device: bool) -> None:
        """Empty the slot after a failed install; the install's own error is what matters."""
        # If this fails too, the next install overwrites it; nothing switches to a failed slot.
        with suppress(SysupdError):
            self._wipe_open(fd, is_device)

    def _io_error(self, exc: OSError, doing: str) -> InstallError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return InstallError(f"no space left in slot {self.name} while {doing} the image")
        if exc.errno == errno.EIO:
            return InstallError(f"I/O error in slot {self.name} while {doing} the image")
        return InstallError(f"slot {self.name} failed while {doing} the image: {exc}")


def _read(
    payload: BinaryIO, readinto: Callable[[memoryview], int | None] | None, buffer: memoryview
) -> int:
    """Fill ``buffer`` from the payload as far as one read goes; 0 at its end."""
    if readinto is not None:
        return readinto(buffer) or 0
    data = payload.read(len(buffer))
    buffer[: len(data)] = data
    return len(data)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data = data[written:]
