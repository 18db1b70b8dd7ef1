"""An in-memory slot writer that records what it was asked: the real writers' twin for tests.

Responsibility: stand in for ``DirectorySlot`` or ``RawSlot`` wherever a ``SlotWriter`` is
expected, keep the payload it was given in memory, record every install and wipe, and fail on
request the way a real slot fails (a full or broken disk, an fsync that reports an error).

Invariants (the real writers' contract, ``sysupd.slots.base``):

- ``install`` reads the payload to its end, so the reader's end checks run, and then asks it for
  one byte more (``expect_end``); a payload of another length than its signed one is refused.
- A failed ``install`` leaves the slot wiped (``data`` empty, ``installed`` None, ``wiped``
  counted), and raises what the real writer of that payload kind raises: ``InstallError`` with
  the same words for an ``OSError`` while writing or syncing, ``VerificationError`` for a
  payload that is not the signed one; the reader's own errors pass through unchanged.
- It takes either payload kind; a tree payload is kept as the archive bytes it came as (it is
  not unpacked, so a write failure inside a tree names "files", not the member).
- Memory grows with the payload: for tests only.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from sysupd.errors import InstallError, VerificationError
from sysupd.slots._treewriter import install_error
from sysupd.slots.base import PayloadSpec, ProgressStream, expect_end
from sysupd.slots.raw import image_error

__all__ = ["InstallCall", "MemorySlot"]

_READ_BYTES = 64 << 10

Progress = Callable[[int], None] | None  # as SlotWriter.install's ``progress``


@dataclass(frozen=True, slots=True)
class InstallCall:
    """One ``install`` asked of a ``MemorySlot``, and how it ended."""

    spec: PayloadSpec
    written: int  # payload bytes taken into the slot before it ended
    error: BaseException | None  # what ``install`` raised; None when it returned


class MemorySlot:
    """A slot held in memory, recording installs and wipes, failing when told to."""

    def __init__(
        self,
        name: str,
        *,
        fail_write_at: int | None = None,
        fail_fsync: bool = False,
        fail_errno: int = errno.ENOSPC,
    ) -> None:
        """``fail_write_at``: the write that reaches this payload byte fails with ``fail_errno``
        (ENOSPC: full, EIO: broken), the bytes before it taken; ``fail_fsync``: the final
        durability barrier fails with EIO once everything was written.
        """
        if fail_write_at is not None and fail_write_at < 0:
            raise ValueError("fail_write_at must not be negative")
        self.name = name
        self.fail_write_at = fail_write_at
        self.fail_fsync = fail_fsync
        self.fail_errno = fail_errno
        self.installs: list[InstallCall] = []
        self.wiped = 0  # times the slot was emptied: by wipe(), or after a failed install
        self.data = b""  # what the slot holds: the payload as received (a tree's archive)
        self.installed: PayloadSpec | None = None  # the spec of what it holds, if anything

    def __repr__(self) -> str:
        return f"MemorySlot({self.name!r})"

    def install(self, payload: BinaryIO, spec: PayloadSpec, progress: Progress = None) -> None:
        """Empty the slot and take the payload into memory, read to its end.

        Raises:
            VerificationError: the payload is not as long as signed (or the reader refused it).
            InstallError: a failure was asked for (write at ``fail_write_at``, or the fsync).
            AcquireError: the payload stream could not be read.
        """
        self._empty()
        source = payload if progress is None else ProgressStream(payload, progress)
        taken = bytearray()
        try:
            self._take(source, spec, taken)
        except BaseException as exc:
            self._empty()
            self.wiped += 1
            self.installs.append(InstallCall(spec, len(taken), exc))
            raise
        self.data, self.installed = bytes(taken), spec
        self.installs.append(InstallCall(spec, len(taken), None))

    def wipe(self) -> None:
        """Leave the slot empty."""
        self._empty()
        self.wiped += 1

    def _take(self, source: BinaryIO, spec: PayloadSpec, taken: bytearray) -> None:
        while chunk := source.read(_READ_BYTES):
            if self.fail_write_at is not None and len(taken) + len(chunk) > self.fail_write_at:
                taken += chunk[: self.fail_write_at - len(taken)]
                failure = OSError(self.fail_errno, os.strerror(self.fail_errno))
                raise self._error(failure, spec) from failure
            taken += chunk
        if len(taken) != spec.length:
            raise VerificationError(
                f"the payload has {len(taken)} bytes, not its signed {spec.length}"
            )
        expect_end(source, "image" if spec.kind == "raw" else "archive")
        if self.fail_fsync:
            failure = OSError(errno.EIO, os.strerror(errno.EIO))
            raise self._error(failure, spec) from failure

    def _error(self, exc: OSError, spec: PayloadSpec) -> InstallError:
        """What the real writer of ``spec``'s kind raises for ``exc`` while writing."""
        if spec.kind == "raw":
            return image_error(exc, self.name, "writing")
        return install_error(exc, "files")

    def _empty(self) -> None:
        self.data, self.installed = b"", None
