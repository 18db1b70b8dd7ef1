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
  swallows one exception cannot carry on past the chunk that failed. Errors reach the consumer
  in payload order: every good chunk before the one that failed is handed out first.
- Memory is one chunk buffer (the release's ``chunk_size``, at most ``MAX_CHUNK_BYTES``, or the
  payload's length if shorter), allocated once and reused; with ``read_ahead(n)`` it is ``n``
  more. Nothing else grows with the payload.
- Read-ahead (off unless the consumer asks for it): the SHA-256 of the next chunks runs on one
  worker thread while the consumer uses the current one (hashlib releases the GIL). Only the
  consumer's thread reads the source, calls ``progress`` and runs the end checks; the worker
  touches nothing but the verifier and our private buffers, and hands nothing out. It stops after
  the last chunk, at the first failure, and on ``close`` (also when the reader is collected).
- Errors: ``VerificationError`` for content that is not the signed payload (a bad chunk, too
  short, too long); ``AcquireError`` (from the ``OSError``) when the source cannot be read. The
  source is never closed here: whoever opened it closes it.
"""

from __future__ import annotations

import io
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from sysupd.core.chunks import ChunkVerifier
from sysupd.errors import AcquireError, UpdateError, VerificationError
from sysupd.slots.base import ReadStream
from sysupd.sources.base import ByteSource

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["MAX_CHUNK_BYTES", "MAX_READ_AHEAD", "ByteSource", "VerifiedReader", "drain"]

MAX_CHUNK_BYTES = 64 << 20  # the largest chunk a device buffers; releases use 4 MiB
MAX_READ_AHEAD = 2  # chunks verified ahead of the consumer, at most
_DRAIN_BYTES = 1 << 20  # drain()'s reusable buffer


@runtime_checkable
class _ReadintoSource(Protocol):
    """A source that can fill our buffer directly, saving a copy (files, BytesIO)."""

    def readinto(self, buffer: WriteableBuffer, /) -> int | None: ...


class _Checker:
    """One worker thread running ``ChunkVerifier.check`` on the chunks it is given, in order.

    It holds no reference to the reader, so a reader that is dropped without ``close`` is still
    collected, and its ``close`` (run by ``io.IOBase`` then) stops the worker.
    """

    def __init__(self, verifier: ChunkVerifier) -> None:
        self._verifier = verifier
        self._jobs: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sysupd-verify", daemon=True)
        self._thread.start()

    def submit(self, chunk: memoryview) -> None:
        self._jobs.put(chunk)

    def result(self) -> BaseException | None:
        """The outcome of the oldest chunk submitted and not yet collected (waits for it)."""
        return self._results.get()

    def stop(self) -> None:
        """Let the worker finish the chunk at hand (if any), and wait for it to end."""
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while (chunk := self._jobs.get()) is not None:
            try:
                self._verifier.check(chunk)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, in order
                self._results.put(exc)
                return  # nothing is checked after a failure
            self._results.put(None)


class VerifiedReader(ReadStream):
    """A read-only, non-seekable stream of a payload, chunk-verified as it is read.

    Accepted wherever a binary file is: tarfile's stream mode, zstandard's ``stream_reader``,
    ``shutil.copyfileobj``, ``io.BufferedReader``.
    """

    stream_name = "<verified payload>"

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
        checks for the last one), from the consumer's thread.

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
        self._chunk_bytes = max(1, min(verifier.chunk_size, verifier.length))
        self._whole = memoryview(bytearray(self._chunk_bytes))  # a chunk buffer
        self._buffer = self._whole[:0]  # the verified chunk being handed out
        self._start = 0  # verified bytes in _buffer[_start:_end] not yet handed out
        self._end = 0
        self._received = 0  # bytes taken from the source, checked or not
        self._verified = 0  # bytes checked and released to the consumer
        self._failed: BaseException | None = None
        self._complete = False
        # Read-ahead: chunks read and given to the checker, oldest first, as (whole buffer,
        # chunk, end offset), or the error that reading the next one raised; the buffers unused;
        # the whole buffer of the chunk being handed out.
        self._depth = 0
        self._checker: _Checker | None = None
        self._pending: deque[tuple[memoryview, memoryview, int] | BaseException] = deque()
        self._spare: list[memoryview] = []
        self._lent: memoryview | None = None
        self._read_to = 0  # payload bytes read into buffers so far
        self._read_failed = False

    def read_ahead(self, chunks: int = 1) -> None:
        """Verify up to ``chunks`` chunks ahead of the consumer, on a worker thread.

        Costs ``chunks`` more chunk buffers; pays when the consumer does work of its own per
        chunk (parsing, writing) that can run beside the hashing. Call it before the first read.

        Raises:
            ValueError: ``chunks`` is not between 0 and ``MAX_READ_AHEAD``, or reading started.
        """
        if not 0 <= chunks <= MAX_READ_AHEAD:
            raise ValueError(f"read-ahead must be 0 to {MAX_READ_AHEAD} chunks, not {chunks}")
        if self._received or self._complete or self._failed is not None or self.closed:
            raise ValueError("read-ahead must be set before the first read")
        self._depth = chunks if self._verifier.length > self._verifier.chunk_size else 0
        more = [memoryview(bytearray(self._chunk_bytes)) for _ in range(self._depth)]
        self._spare = [self._whole, *more] if self._depth else []

    # The io.RawIOBase interface.

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
        """Stop the read-ahead worker and release the buffers; the source stays open."""
        if not self.closed:
            self._stop_checker()
            self._start = self._end = 0
            # Frees the chunk buffers once no slice of them is held.
            self._buffer = self._whole = memoryview(b"")
            self._lent = None
            self._pending.clear()
            self._spare.clear()
        super().close()

    # Where we are.

    @property
    def bytes_verified(self) -> int:
        """Payload bytes checked and released so far (some may still wait in the buffer)."""
        return self._verified

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
            if self._depth:
                self._next_ahead()
            else:
                self._fill()
        except BaseException as exc:  # even a progress callback's: that chunk is gone
            self._failed = exc
            self._start = self._end = 0
            self._stop_checker()
            self._pending.clear()
            raise
        return self._start < self._end

    def _fill(self) -> None:
        """Read, check and hold the next chunk; at the signed end, run the end checks."""
        size = self._verifier.next_size()
        chunk = self._whole[:size]
        self._read_chunk(chunk)
        if size:
            self._verifier.check(chunk)
        self._release(chunk, self._verifier.bytes_checked, last=self._verifier.done)

    def _next_ahead(self) -> None:
        """Hand out the oldest chunk in flight once checked; keep the checker busy with more."""
        if self._checker is None:
            self._checker = _Checker(self._verifier)
        if self._lent is not None:
            self._spare.append(self._lent)  # the consumer is done with it
            self._lent = None
        self._buffer, self._start, self._end = self._whole[:0], 0, 0
        self._read_more()
        head = self._pending.popleft()
        if isinstance(head, BaseException):
            raise head
        whole, chunk, end = head
        failure = self._checker.result()
        if failure is not None:
            raise failure
        self._lent = whole
        self._release(chunk, end, last=end == self._verifier.length)

    def _read_more(self) -> None:
        """Read chunks into the unused buffers and give them to the checker, while any is left.

        A read that fails is queued in the chunk's place, so the consumer gets every good chunk
        before it, and then the error.
        """
        length, size = self._verifier.length, self._verifier.chunk_size
        while self._spare and self._read_to < length and not self._read_failed:
            want = min(size, length - self._read_to)
            whole = self._spare.pop()
            chunk = whole[:want]
            try:
                self._read_chunk(chunk)
            except BaseException as exc:  # noqa: BLE001 - handed out after the chunks before it
                self._read_failed = True
                self._pending.append(exc)
                return
            self._read_to += want
            assert self._checker is not None
            self._checker.submit(chunk)
            self._pending.append((whole, chunk, self._read_to))

    def _release(self, chunk: memoryview, end: int, *, last: bool) -> None:
        """Run the end checks after the last chunk, report progress, then hand ``chunk`` out."""
        if last:
            self._verifier.finish()
            if self._expect_eof and not self._source_ended():
                raise VerificationError(
                    f"the payload is longer than its signed {self._verifier.length} bytes"
                )
            self._complete = True
            self._stop_checker()
        self._verified = end
        if len(chunk) and self._progress is not None:
            self._progress(end)
        self._buffer, self._start, self._end = chunk, 0, len(chunk)

    def _stop_checker(self) -> None:
        if self._checker is not None:
            self._checker.stop()

    def _read_chunk(self, chunk: memoryview) -> None:
        """Fill ``chunk`` from the source.

        Raises:
            VerificationError: the source ended first.
            AcquireError: the source could not be read.
        """
        got = 0
        while got < len(chunk):
            count = self._read_source(chunk[got:])
            if count == 0:
                raise VerificationError(
                    f"the payload ended after {self._received} of its signed "
                    f"{self._verifier.length} bytes"
                )
            got += count
            self._received += count

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
