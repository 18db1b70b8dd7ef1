"""Writing a raw image into its slot piece by piece, keeping what the slot holds already.

Responsibility: the raw slot's side of a delta install. The slot is opened like for a full
install (a block device with ``O_EXCL``, a file without following links, the image's size
checked against the slot's capacity before anything is written), then the installer reads it
(``read_at``: what it holds at a chunk's place, to keep when its hash matches) and writes the
chunks it lacks at their offsets (``write_at``). ``finish`` makes the image durable and proves
every byte written reads back from the storage as it was checked.

Invariants:

- Nothing is truncated or wiped before the first write, so a slot that holds most of the image
  (the release before last, or an install cut short by a restart) keeps it; a file slot is cut
  to the image's length only at ``finish``.
- Reading back (``BlockReadBack``): the bytes written (``write_at``) or kept (``keep``) are
  counted against the blocks of the image's signed chunk list; each block complete, in whatever
  order, is read back by a worker thread from the storage (after an fsync, its cached pages
  dropped) and checked against its signed hash; ``finish`` makes sure every block was checked.
  So when ``finish`` returns, the image on the storage is the signed one, byte for byte, kept
  parts included.
- On failure (``abort``), the slot's first ``WIPE_BYTES`` are zeroed, so no half-written image
  looks like a filesystem, but the rest stays for the next attempt to keep.
- Memory: what the caller hands in, the gathering buffer (``_GATHER_BYTES``) and the read-back's
  count per block.
"""

from __future__ import annotations

import errno
import os
from contextlib import suppress

from sysupd.core.chunks import ChunkList
from sysupd.errors import InstallError, SysupdError
from sysupd.slots._blockreadback import BlockReadBack
from sysupd.slots._durability import advise_dontneed
from sysupd.slots.raw import WIPE_BYTES, RawSlot, image_error

__all__ = ["RawPatch"]

_SYNC_BYTES = 8 << 20  # written bytes after which their writeback is started
_GATHER_BYTES = 1 << 20  # contiguous chunks written with one system call


class RawPatch:
    """One delta install into a raw slot; ``with`` closes it (``abort`` on an error)."""

    def __init__(self, slot: RawSlot, blocks: ChunkList) -> None:
        """Open ``slot`` for the image whose signed chunk list is ``blocks``.

        Raises:
            InstallError: the slot cannot be opened, or is smaller than the image.
        """
        self._slot = slot
        self.length = length = blocks.length
        self._fd, self._is_device = slot.open_fd()
        try:
            capacity = slot.capacity_of(self._fd, self._is_device)
            if capacity is not None and length > capacity:
                raise InstallError(
                    f"the image ({length} bytes) is larger than slot {slot.name} ({capacity} bytes)"
                )
            self.held = os.lseek(self._fd, 0, os.SEEK_END)
            """The bytes the slot holds now (a file's size; a device's)."""
        except BaseException:
            os.close(self._fd)
            raise
        self._readback = BlockReadBack(self._fd, blocks)
        self._placed = 0
        self._unsynced = 0
        self._unsynced_from = -1
        self._gathered: list[bytes | memoryview] = []
        self._gather_start = self._gather_end = 0
        if not self._is_device and self.held < length:
            # Blocks allocated at once, not chunk by chunk; what the file holds is kept.
            with suppress(OSError):
                os.posix_fallocate(self._fd, 0, length)

    @property
    def name(self) -> str:
        """The slot's name."""
        return self._slot.name

    def read_at(self, offset: int, length: int) -> bytes:
        """What the slot holds at ``offset`` (fewer bytes past its end).

        Raises:
            InstallError: the slot cannot be read.
        """
        if self._gathered and offset < self._gather_end and self._gather_start < offset + length:
            self._flush()  # what it holds there is still in the gathering buffer
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise image_error(exc, self._slot.name, "reading") from exc

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` (checked against its signed hash already) at ``offset``; contiguous
        writes are gathered into one system call of up to ``_GATHER_BYTES``.

        Raises:
            InstallError: the write failed (full, I/O error).
        """
        if offset + len(data) > self.length:
            raise InstallError(
                f"a write of {len(data)} bytes at {offset} is past the {self.length}-byte "
                f"image's end in slot {self._slot.name}"
            )
        if self._gathered and offset != self._gather_end:
            self._flush()
        if not self._gathered:
            self._gather_start = offset
        self._gathered.append(data)
        self._gather_end = offset + len(data)
        if self._gather_end - self._gather_start >= _GATHER_BYTES:
            self._flush()

    def keep(self, offset: int, length: int) -> None:
        """The slot holds ``length`` bytes of the image at ``offset`` already (checked).

        Raises:
            InstallError: some of them were written or kept before (a bug).
        """
        self._place(offset, length)

    def _flush(self) -> None:
        """Write what was gathered, and start the writeback of each ``_SYNC_BYTES``."""
        if not self._gathered:
            return
        offset, buffers = self._gather_start, self._gathered
        self._gathered = []
        total = self._gather_end - offset
        try:
            done = os.pwritev(self._fd, buffers, offset)
            if done < total:  # a short write: the rest one piece at a time
                rest = memoryview(b"".join(buffers))[done:]
                while rest:
                    count = os.pwrite(self._fd, rest, offset + done)
                    if count == 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    done += count
                    rest = rest[count:]
        except OSError as exc:
            raise image_error(exc, self._slot.name, "writing") from exc
        self._place(offset, total)  # written: read back in their turn
        if self._unsynced_from < 0:
            self._unsynced_from = offset
        self._unsynced += total
        if self._unsynced >= _SYNC_BYTES:  # get the disk going; durability is fsync's
            end = offset + total
            advise_dontneed(self._fd, self._unsynced_from, end - self._unsynced_from)
            self._unsynced, self._unsynced_from = 0, -1

    def _place(self, offset: int, length: int) -> None:
        try:
            self._readback.placed(offset, length)
        except ValueError as exc:
            raise InstallError(f"slot {self._slot.name}: {exc}") from exc
        self._placed += length

    def finish(self) -> None:
        """Cut a file slot to the image's length, fsync, and wait for the read-back of every
        block to match its signed hash.

        Raises:
            InstallError: the slot could not be made durable, or reads back differently.
        """
        self._flush()
        try:
            if not self._is_device:
                os.ftruncate(self._fd, self.length)
            os.fsync(self._fd)
        except OSError as exc:
            raise image_error(exc, self._slot.name, "writing") from exc
        checked, failure = self._readback.finish()
        if failure is not None:
            raise InstallError(f"slot {self._slot.name}: {failure}")
        if checked != self.length or self._placed != self.length:
            raise InstallError(
                f"slot {self._slot.name} reads back {checked} of the image's {self.length} bytes"
            )

    def abort(self) -> None:
        """After a failure: zero the slot's start so it looks like no filesystem; keep the rest
        for the next attempt."""
        self._readback.stop()
        with suppress(OSError, SysupdError):
            zeros = bytes(min(WIPE_BYTES, self.length))
            done = 0
            while done < len(zeros):
                done += os.pwrite(self._fd, zeros[done:], done)
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the slot."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
