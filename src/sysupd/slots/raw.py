"""A slot that is a block device or a regular file: raw images are written to it.

Responsibility: own one inactive raw slot (one of a pair of partitions, or of image files): write
a verified image to it, make it durable, prove it reads back as the signed image, or empty it.

Invariants:

- A raw payload is an uncompressed image, so its signed length equals its installed size and
  its signed SHA-256 is the image's. Specs where they differ are refused.
- Size is checked before the first write: an image larger than the device (or than ``max_bytes``
  for a size-limited file slot) is refused with the slot untouched. A regular file has no size
  of its own (a wipe truncates it to nothing), so without ``max_bytes`` it grows to the image's
  size; the device's configured capacity (setting ``slot_capacity_bytes``) is checked by the
  engine against the signed installed size before the slot is even opened.
- A block device is opened with ``O_EXCL``: Linux then refuses it while it is mounted or
  otherwise claimed, so the running system's filesystem cannot be overwritten by a wrong setting.
  A regular file is opened with ``O_NOFOLLOW`` and never created: a missing path is an error,
  so a mistyped device name cannot turn into a file on ``/dev``.
- Memory is three reusable 1 MiB buffers (one to write from, two to read back into), and one
  more chunk buffer in a payload stream that verifies ahead (``ReadAhead``); the image is
  streamed through them, never held whole.
- ``install`` returns only after the whole image was fsynced and read back from the slot with the
  signed SHA-256. Every byte is read back only after an fsync that covered it returned, with its
  cached pages dropped first where the kernel allows (``POSIX_FADV_DONTNEED``), so the read comes
  from the storage. Once writing started, any failure wipes the slot before the error propagates.
- One pass: the read-back runs on a worker thread a stretch (``_READBACK_BYTES``) behind the
  writer: fsync, drop the stretch's pages, read it, hash it (on a second thread, so the next read
  overlaps the hashing). The payload stream is asked to verify a chunk ahead, on a thread of its
  own. So writing, the payload's chunk checks and the read-back overlap on two cores instead of
  being passes in a row. Writeback of each stretch is started as soon as it is
  written, so the disk works all along instead of only in the final fsync; the last stretch is
  read back after the final fsync. (What this gives up against reading everything back after
  the final fsync: a stretch already read back is not read again, so storage that corrupted it
  later, during the rest of the install, would go unnoticed, as would corruption after
  ``install`` returns. With ``_READBACK_BYTES`` over the image's size, the whole read-back
  happens after the final fsync, as before.)
"""

from __future__ import annotations

import errno
import hmac
import io
import os
import stat
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from sysupd.errors import InstallError, SysupdError, VerificationError
from sysupd.slots._durability import advise_dontneed
from sysupd.slots._readback import ReadBack
from sysupd.slots.base import PROGRESS_STEP_BYTES, PayloadSpec, ask_read_ahead, expect_end

__all__ = ["WIPE_BYTES", "RawSlot", "image_error"]

WIPE_BYTES = 1 << 20  # zeroed at the start of a block device by wipe()
_BUFFER_BYTES = 1 << 20  # one reusable copy buffer (the read-back has two of its own)
_READ_AHEAD_CHUNKS = 1  # chunk hashing beside writing: one more chunk buffer
_READBACK_BYTES = 8 << 20  # written stretch after which it is made durable and read back

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
        fd, is_device = self.open_fd()
        try:
            capacity = self.capacity_of(fd, is_device)
            if capacity is not None and spec.installed_size > capacity:
                raise InstallError(
                    f"the image ({spec.installed_size} bytes) is larger than slot {self.name}"
                    f" ({capacity} bytes)"
                )
            readback = ReadBack(fd, spec.installed_size, _READBACK_BYTES)
            try:
                self._write_image(fd, is_device, payload, spec, progress, readback)
                self._check_readback(readback, spec)
            except BaseException:
                readback.stop()
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
        fd, is_device = self.open_fd()
        try:
            self._wipe_open(fd, is_device)
        finally:
            os.close(fd)

    # The steps.

    def open_fd(self) -> tuple[int, bool]:
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

    def capacity_of(self, fd: int, is_device: bool) -> int | None:
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
        readback: ReadBack,
    ) -> None:
        """Stream the payload into the slot from offset 0 and make it durable.

        Each ``_READBACK_BYTES`` written, their writeback is started and the read-back worker is
        told; after the final fsync it is told the rest is durable.
        """
        ask_read_ahead(payload, _READ_AHEAD_CHUNKS)
        buffer = memoryview(bytearray(_BUFFER_BYTES))
        readinto = (
            payload.readinto if isinstance(payload, io.RawIOBase | io.BufferedIOBase) else None
        )
        written = reported = posted = 0
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
                if written - posted >= _READBACK_BYTES:
                    advise_dontneed(fd, posted, written - posted)  # start its writeback
                    readback.written(written)
                    posted = written
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
        readback.written(written, durable=True)
        if progress is not None and reported != written:
            progress(written)

    def _check_readback(self, readback: ReadBack, spec: PayloadSpec) -> None:
        """Wait for the read-back of the whole image; compare its SHA-256 with the signed one."""
        read, digest, failure = readback.finish()
        if failure is not None:
            doing, exc = failure
            raise self._io_error(exc, doing) from exc
        if read < spec.installed_size:
            raise InstallError(
                f"slot {self.name} reads back only {read} of {spec.installed_size}"
                " bytes: bad storage?"
            )
        if not hmac.compare_digest(digest, spec.sha256.lower()):
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
        return image_error(exc, self.name, doing)


def image_error(exc: OSError, slot: str, doing: str) -> InstallError:
    """The error for an image that could not be written (``doing``: "writing", "wiping", ...)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InstallError(f"no space left in slot {slot} while {doing} the image")
    if exc.errno == errno.EIO:
        return InstallError(f"I/O error in slot {slot} while {doing} the image")
    return InstallError(f"slot {slot} failed while {doing} the image: {exc}")


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
