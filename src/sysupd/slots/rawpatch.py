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
- Reading back: after the final fsync, each stretch written is dropped from the page cache and
  read again, and every chunk written must hash as it did when it was checked. Chunks kept were
  read (and checked) in this install already. So when ``finish`` returns, every byte of the image
  was read from the slot and matched its signed hash in this install.
- On failure (``abort``), the slot's first ``WIPE_BYTES`` are zeroed, so no half-written image
  looks like a filesystem, but the rest stays for the next attempt to keep.
- Memory: what the caller hands in, and one ``_READ_BYTES`` buffer at ``finish``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from contextlib import suppress

from sysupd.errors import InstallError, SysupdError
from sysupd.slots._durability import advise_dontneed
from sysupd.slots.raw import WIPE_BYTES, RawSlot, image_error

__all__ = ["RawPatch"]

_SYNC_BYTES = 64 << 20  # written bytes after which writeback is started


class RawPatch:
    """One delta install into a raw slot; ``with`` closes it (``abort`` on an error)."""

    def __init__(self, slot: RawSlot, length: int) -> None:
        """Open ``slot`` for an image of ``length`` bytes.

        Raises:
            InstallError: the slot cannot be opened, or is smaller than the image.
        """
        self._slot = slot
        self.length = length
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
        self._written: list[tuple[int, int, bytes]] = []
        self._unsynced = 0

    @property
    def name(self) -> str:
        """The slot's name."""
        return self._slot.name

    def read_at(self, offset: int, length: int) -> bytes:
        """What the slot holds at ``offset`` (fewer bytes past its end).

        Raises:
            InstallError: the slot cannot be read.
        """
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise image_error(exc, self._slot.name, "reading") from exc

    def write_at(self, offset: int, data: bytes, digest: bytes) -> None:
        """Write ``data`` (checked, with SHA-256 ``digest``) at ``offset``.

        Raises:
            InstallError: the write failed (full, I/O error).
        """
        if offset + len(data) > self.length:
            raise InstallError(f"a write past the image's end in slot {self._slot.name}")
        try:
            view = memoryview(data)
            done = 0
            while done < len(view):
                count = os.pwrite(self._fd, view[done:], offset + done)
                if count == 0:
                    raise OSError(28, os.strerror(28))
                done += count
        except OSError as exc:
            raise image_error(exc, self._slot.name, "writing") from exc
        self._written.append((offset, len(data), digest))
        self._unsynced += len(data)
        if self._unsynced >= _SYNC_BYTES:
            advise_dontneed(self._fd)  # get the disk going; durability is finish's fsync
            self._unsynced = 0

    def finish(self) -> int:
        """Cut a file slot to the image's length, fsync, and read back every chunk written;
        the bytes read back.

        Raises:
            InstallError: the slot could not be made durable, or reads back differently.
        """
        try:
            if not self._is_device:
                os.ftruncate(self._fd, self.length)
            os.fsync(self._fd)
        except OSError as exc:
            raise image_error(exc, self._slot.name, "writing") from exc
        advise_dontneed(self._fd)  # the read-back comes from the storage, not the cache
        checked = 0
        for offset, length, digest in self._written:
            data = self.read_at(offset, length)
            if len(data) != length or not hmac.compare_digest(
                hashlib.sha256(data).digest(), digest
            ):
                raise InstallError(
                    f"slot {self._slot.name} reads back differently at byte {offset}: bad storage?"
                )
            checked += length
        advise_dontneed(self._fd)
        return checked

    def abort(self) -> None:
        """After a failure: zero the slot's start so it looks like no filesystem; keep the rest
        for the next attempt."""
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
