"""A payload stream that hands out only bytes already checked against the signed chunk list.

Responsibility: sit between an untrusted source of payload bytes (a bundle file positioned at its
payload, a network response) and whatever consumes the payload (tarfile, zstandard, a raw slot
writer), and check every chunk with a ``ChunkVerifier`` before any of its bytes moves on.

Invariants:

- No byte of a chunk is handed to the consumer before ``ChunkVerifier.check`` accepted the whole
  chunk. The chunk is read into a private buffer first; the consumer's buffer is only written
  from that buffer after the check.
- The last chunk is handed out only after ``ChunkVerifier.finish`` confirmed the whole payload's
  hash and, unless ``expect_eof`` is off, the source proved to have nothing after the signed
  length. So a consumer that stops after exactly the signed length has still seen the end checks.
- After an error the reader stays failed: every later read raises again, so a consumer that
  swallows one exception cannot carry on past the chunk that failed.
- Memory is one chunk buffer (the release's ``chunk_size``, at most ``MAX_CHUNK_BYTES``, or the
  payload's length if shorter), allocated once and reused; nothing else grows with the payload.
- Errors: ``VerificationError`` for content that is not the signed payload (a bad chunk, too
  short, too long); ``AcquireError`` (from the ``OSError``) when the source cannot be read. The
  source is never closed here: whoever opened it closes it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from sysupd.core.chunks import ChunkVerifier
from sysupd.errors import AcquireError, UpdateError, VerificationError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["MAX_CHUNK_BYTES", "ByteSource", "VerifiedReader", "drain"]

MAX_CHUNK_BYTES = 64 << 20  # the largest chunk a device buffers; releases use 4 MiB
_DRAIN_BYTES = 1 << 20  # drain()'s reusable buffer


class ByteSource(Protocol):
    """Where payload bytes come from: anything with a blocking ``read(n)``."""

    def read(self, size: int, /) -> bytes:
        """Up to ``size`` bytes; ``b""`` only at the end."""
        ...


@runtime_checkable
class _ReadintoSource(Protocol):
    """A source that can fill our buffer directly, saving a copy (files, BytesIO)."""

    def readinto(self, buffer: WriteableBuffer, /) -> int | None: ...


class VerifiedReader(io.RawIOBase, BinaryIO):
    """A read-only, non-seekable stream of a payload, chunk-verified as it is read.

    Accepted wherever a binary file is: tarfile's stream mode, zstandard's ``stream_reader``,
    ``shutil.copyfileobj``, ``io.BufferedReader``.
    """

    def __init__(
        self,
        source: ByteSource,
        verifier: ChunkVerifier,
        *,
        expect_eof: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Read the payload from ``source``, which must be positioned at its first byte.

        ``expect_eof``: the source must end exactly with the payload (true for a bundle file or
        a download of the payload alone); turn it off for a source that carries more after it.
        ``progress`` is called with the verified byte count after each chunk (after the end
        checks for the last one).

        Raises:
            VerificationError: the release's chunk size is over ``MAX_CHUNK_BYTES``.
        """
        super().__init__()
        if verifier.chunk_size > MAX_CHUNK_BYTES:
            raise VerificationError(
                f"the release's chunk size of {verifier.chunk_size} bytes is over the"
                f" {MAX_CHUNK_BYTES} bytes a device buffers"
            )
        self._source = source
        self._readinto: Callable[[memoryview], int | None] | None = (
            source.readinto if isinstance(source, _ReadintoSource) else None
        )
        self._verifier = verifier
        self._expect_eof = expect_eof
        self._progress = progress
        self._buffer = memoryview(bytearray(max(1, min(verifier.chunk_size, verifier.length))))
        self._start = 0  # verified bytes in _buffer[_start:_end] not yet handed out
        self._end = 0
        self._received = 0  # bytes taken from the source, checked or not
        self._failed: BaseException | None = None
        self._complete = False

    # The io.RawIOBase interface.

    def readable(self) -> bool:
        return True

    @property
    def mode(self) -> str:
        return "rb"

    @property
    def name(self) -> str:
        return "<verified payload>"

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Fill ``buffer`` with verified bytes; 0 only at the verified end.

        Raises:
            VerificationError: the payload is not the signed one (bad chunk, too short, too long).
            AcquireError: the source could not be read.
        """
        if not self._available():
            return 0
        with memoryview(buffer) as target, target.cast("B") as out:
            count = min(len(out), self._end - self._start)
            out[:count] = self._buffer[self._start : self._start + count]
        self._start += count
        return count

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to ``size`` verified bytes (all the rest if ``size`` is negative or None).

        Raises:
            VerificationError: the payload is not the signed one (bad chunk, too short, too long).
            AcquireError: the source could not be read.
        """
        if size is None or size < 0:
            return self.readall()
        if size == 0 or not self._available():
            return b""
        count = min(size, self._end - self._start)
        data = bytes(self._buffer[self._start : self._start + count])  # the one copy out
        self._start += count
        return data

    def readall(self) -> bytes:
        """Every remaining verified byte (memory grows with the payload: for small ones only).

        Raises:
            VerificationError: the payload is not the signed one (bad chunk, too short, too long).
            AcquireError: the source could not be read.
        """
        parts = []
        while self._available():
            parts.append(bytes(self._buffer[self._start : self._end]))
            self._start = self._end
        return b"".join(parts)

    def close(self) -> None:
        """Release the chunk buffer; the source stays open (its owner closes it)."""
        if not self.closed:
            self._start = self._end = 0
            self._buffer = memoryview(b"")  # frees the chunk buffer once no slice of it is held
        super().close()

    # Where we are.

    @property
    def bytes_verified(self) -> int:
        """Payload bytes checked so far (some may still wait in the buffer)."""
        return self._verifier.bytes_checked

    @property
    def complete(self) -> bool:
        """Whether the whole payload, and the end of the source if expected, has been checked."""
        return self._complete

    # Filling the buffer, one verified chunk at a time.

    def _available(self) -> bool:
        """Make sure verified bytes wait in the buffer, unless the payload is over.

        Raises:
            ValueError: the reader is closed.
            VerificationError, AcquireError: as for ``readinto``, now or at an earlier read.
        """
        if self.closed:
            raise ValueError("I/O operation on a closed payload stream")
        if self._failed is not None:
            if isinstance(self._failed, UpdateError):
                raise type(self._failed)(str(self._failed)) from self._failed
            raise AcquireError("the payload stream was interrupted earlier") from self._failed
        if self._start < self._end:
            return True
        if self._complete:
            return False
        try:
            self._fill()
        except BaseException as exc:  # even a progress callback's: that chunk is gone
            self._failed = exc
            self._start = self._end = 0
            raise
        return self._start < self._end

    def _fill(self) -> None:
        """Read, check and hold the next chunk; at the signed end, run the end checks."""
        size = self._verifier.next_size()
        chunk = self._buffer[:size]
        got = 0
        while got < size:
            count = self._read_source(chunk[got:])
            if count == 0:
                raise VerificationError(
                    f"the payload ended after {self._received} of its signed "
                    f"{self._verifier.length} bytes"
                )
            got += count
            self._received += count
        if size:
            self._verifier.check(chunk)
        if self._verifier.done:
            self._verifier.finish()
            if self._expect_eof and not self._source_ended():
                raise VerificationError(
                    f"the payload is longer than its signed {self._verifier.length} bytes"
                )
            self._complete = True
        if size and self._progress is not None:
            self._progress(self._verifier.bytes_checked)
        self._start, self._end = 0, size

    def _read_source(self, into: memoryview) -> int:
        """Read at most ``len(into)`` bytes into ``into``; 0 only at the source's end.

        Raises:
            AcquireError: the source raised ``OSError``, or broke its read contract.
        """
        want = len(into)
        try:
            if self._readinto is not None:
                count = self._readinto(into)
                if count is None:
                    raise AcquireError("the payload source is non-blocking and had no data")
                if not 0 <= count <= want:
                    raise AcquireError(f"the payload source reported reading {count} bytes")
                return count
            data = self._source.read(want)
        except OSError as exc:
            raise AcquireError(f"the payload could not be read: {exc}") from exc
        if len(data) > want:
            raise AcquireError(f"the payload source returned {len(data)} bytes for {want} asked")
        into[: len(data)] = data
        return len(data)

    def _source_ended(self) -> bool:
        """Whether the source has nothing after the payload (reads one byte to find out).

        Raises:
            AcquireError: the source raised ``OSError``.
        """
        try:
            return not self._source.read(1)
        except OSError as exc:
            raise AcquireError(f"the payload could not be read: {exc}") from exc


def drain(reader: BinaryIO) -> None:
    """Read ``reader`` to its end, discarding the bytes (to verify a payload without using it).

    Raises:
        VerificationError, AcquireError: as the reader raises them.
    """
    if isinstance(reader, VerifiedReader):
        while reader._available():  # no copy out: the bytes are only checked
            reader._start = reader._end
        return
    if isinstance(reader, io.RawIOBase | io.BufferedIOBase):
        buffer = bytearray(_DRAIN_BYTES)
        while reader.readinto(buffer):
            pass
        return
    while reader.read(_DRAIN_BYTES):
        pass
