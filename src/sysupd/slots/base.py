"""What every slot writer is: the interface, the payload description it installs, shared checks.

Responsibility: the seam between the update engine and the storage of the inactive slot. The
engine hands a slot writer a payload stream (its ``VerifiedReader``, which releases only
chunk-verified bytes) and the ``PayloadSpec`` taken from the signed target entry. What a writer
may ask of that stream beyond a binary file is the ``ReadAhead`` protocol here, so slot writers
depend on this module, never on the engine.

Invariants every writer keeps:

- ``install`` writes only the inactive slot it was built for, and reads the payload to its end
  (a payload with bytes left over after its archive or image is refused), so the reader's end
  checks (whole hash, nothing after the signed length) always run before ``install`` returns.
- A failed ``install`` leaves the slot wiped, never half-written in a way that looks installed;
  a payload refused before any write (wrong kind, too large) leaves the slot untouched.
- Errors: ``VerificationError`` (the payload is not acceptable), ``InstallError`` (the slot could
  not be written); the reader's ``AcquireError`` passes through.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol, runtime_checkable

from sysupd.errors import VerificationError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "PROGRESS_STEP_BYTES",
    "PayloadSpec",
    "ProgressStream",
    "ReadAhead",
    "ReadStream",
    "SlotWriter",
    "ask_read_ahead",
    "expect_end",
]

PROGRESS_STEP_BYTES = 1 << 20  # progress callbacks at most once per this many payload bytes

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class PayloadSpec:
    """A payload as the signed release describes it (``custom.sysupd`` and the target entry)."""

    kind: Literal["tree", "raw"]
    compression: Literal["none", "zstd"]
    installed_size: int  # bytes after decompression: file bytes of a tree, the image's size
    length: int  # the payload's signed length, as transferred
    sha256: str  # the payload's signed SHA-256, hex
    entries: int | None = None  # a tree's members (files and directories); None for an image

    def __post_init__(self) -> None:
        """
        Raises:
            VerificationError: a field is outside what the release format allows.
        """
        problem = None
        if self.kind not in ("tree", "raw"):
            problem = f"unknown payload kind {self.kind!r}"
        elif self.compression not in ("none", "zstd"):
            problem = f"unknown compression {self.compression!r}"
        elif self.kind == "raw" and self.compression != "none":
            problem = "a raw payload cannot be compressed"
        elif not _is_size(self.installed_size) or not _is_size(self.length):
            problem = "sizes must be whole numbers of bytes, not negative"
        elif not isinstance(self.sha256, str) or not _SHA256_HEX.fullmatch(self.sha256):
            problem = "the payload's SHA-256 is not 64 hex digits"
        elif self.kind == "tree" and not _is_size(self.entries):
            problem = "a tree must state its member count, a whole number, not negative"
        elif self.kind == "raw" and self.entries is not None:
            problem = "a raw payload has no member count"
        if problem:
            raise VerificationError(f"the release's payload description is invalid: {problem}")


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SlotWriter(Protocol):
    """Installs a verified payload into one inactive slot, or empties it."""

    name: str  # the slot's name in the settings, e.g. "A"

    def install(
        self,
        payload: BinaryIO,
        spec: PayloadSpec,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Replace the slot's content with the payload, read from ``payload`` to its end.

        ``progress`` is called with the payload bytes consumed so far (up to ``spec.length``).
        When this returns, everything written is durable.

        Raises:
            VerificationError: the payload is not acceptable for this slot or not the signed one.
            InstallError: the slot could not be written (full, I/O error, in use).
            AcquireError: the payload stream could not be read.
        """
        ...

    def wipe(self) -> None:
        """Leave the slot empty, so it cannot be mistaken for an installed one.

        Raises:
            InstallError: the slot could not be emptied.
        """
        ...


@runtime_checkable
class ReadAhead(Protocol):
    """A payload stream that can verify the next chunks on a worker thread (``VerifiedReader``).

    It still hands out only verified bytes; asking costs it ``chunks`` more chunk buffers, and
    pays when the writer has work of its own per chunk (parsing, writing) to do meanwhile.
    """

    def read_ahead(self, chunks: int = 1) -> None:
        """Verify up to ``chunks`` chunks ahead of the reads; called before the first read.

        Raises:
            ValueError: ``chunks`` is out of the stream's range, or reading already started.
        """
        ...


def ask_read_ahead(payload: BinaryIO, chunks: int) -> None:
    """Have ``payload`` verify ``chunks`` ahead if it can; one already being read goes on as is."""
    if isinstance(payload, ReadAhead):
        with suppress(ValueError):
            payload.read_ahead(chunks)


def expect_end(payload: BinaryIO, what: str) -> None:
    """Check ``payload`` has nothing left after ``what`` (which is all it should hold).

    Raises:
        VerificationError: bytes follow.
    """
    if payload.read(1):
        raise VerificationError(f"the payload has data after its {what}")


class ReadStream(io.RawIOBase, BinaryIO):
    """A read-only binary stream that says so (``readable``, ``mode``, ``name``), for the payload
    streams that subclass it."""

    stream_name = "<stream>"

    def readable(self) -> bool:
        return True

    @property
    def mode(self) -> str:
        return "rb"

    @property
    def name(self) -> str:
        return self.stream_name


class ProgressStream(ReadStream):
    """A pass-through reader that reports how many bytes went through it.

    ``progress`` is called each time another ``PROGRESS_STEP_BYTES`` went through, and once at
    the end of the stream. Reads go straight to the wrapped stream, with no copy of their own.
    """

    stream_name = "<payload>"

    def __init__(self, payload: BinaryIO, progress: Callable[[int], None]) -> None:
        super().__init__()
        self._payload = payload
        self._progress = progress
        self._consumed = 0
        self._reported = -1

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Fill ``buffer`` from the wrapped stream."""
        if isinstance(self._payload, io.RawIOBase | io.BufferedIOBase):
            count = self._payload.readinto(buffer) or 0
        else:
            with memoryview(buffer) as target, target.cast("B") as out:
                data = self._payload.read(len(out))
                count = len(data)
                out[:count] = data
        self._count(count)
        return count

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to ``size`` bytes from the wrapped stream."""
        data = self._payload.read(-1 if size is None else size)
        if size != 0:
            self._count(len(data))
        return data

    def _count(self, count: int) -> None:
        self._consumed += count
        at_end = count == 0
        if self._consumed - self._reported >= PROGRESS_STEP_BYTES or (
            at_end and self._consumed != self._reported
        ):
            self._reported = self._consumed
            self._progress(self._consumed)
