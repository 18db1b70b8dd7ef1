"""Reading a raw slot back behind its writer, from the storage, and hashing what it reads.

Responsibility: the second half of ``sysupd.slots.raw``'s one-pass install: as the image is
written, make each stretch durable, drop its cached pages, read it from the slot and SHA-256 it,
on worker threads, so that the read-back overlaps the writing.

Invariants:

- No byte is read back before an fsync that covered it returned (the worker's own, or the
  writer's final one).
- Memory is two reusable ``_READ_BYTES`` buffers: one is read into while the other is hashed.
  The page cache the image takes stays bounded too: each stretch's pages are dropped once it is
  read back, so at most about two stretches are cached whatever the image's size. (On a VM whose
  free memory goes back to the host, writing or reading into page frames not touched lately
  costs a host fault per page: a 1 GiB install spent 4 s of system time when the read-back
  pages were kept.)
- Errors are not raised on the worker: ``finish`` hands back what failed (and while doing what),
  for the writer to translate; ``stop`` ends the worker at the next stretch.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

from sysupd.slots._durability import advise_dontneed

__all__ = ["ReadBack"]

_READ_BYTES = 1 << 20  # one read from the slot, and one buffer to hash


class _Digester:
    """A thread that hashes the buffers it is given, in order, while the next one is read.

    Two buffers go round: the reader fills one while this thread hashes the other.
    """

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(2):
            self.free.put(memoryview(bytearray(_READ_BYTES)))
        self._full: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sysupd-readback-hash", daemon=True)
        self._thread.start()

    def hash(self, data: memoryview) -> None:
        """Hash ``data`` (a slice of a buffer from ``free``), which goes back to ``free`` after."""
        self._full.put(data)

    def finish(self) -> str:
        """Wait for every buffer given so far to be hashed; the SHA-256 (hex)."""
        self._full.put(None)
        self._thread.join()
        return self.digest.hexdigest()

    def _run(self) -> None:
        while (data := self._full.get()) is not None:
            self.digest.update(data)
            whole = data.obj
            assert isinstance(whole, bytearray)
            self.free.put(memoryview(whole))


class ReadBack:
    """A worker thread that reads the slot back behind the writer, and hashes what it reads.

    The writer calls ``written(n)`` as the image grows, and ``written(total, durable=True)``
    after its final fsync. For each stretch, the worker fsyncs (unless the writer just did),
    drops the stretch's cached pages (best effort), and reads it from the slot, handing each
    piece to a ``_Digester`` so the next read overlaps the hashing. So no byte is read back
    before an fsync that covered it returned.
    """

    def __init__(self, fd: int, total: int, stretch: int) -> None:
        """Read back ``total`` bytes of ``fd``, a stretch once ``stretch`` more are written."""
        self._fd = fd
        self._total = total
        self._stretch = stretch
        self._changed = threading.Condition()
        self._written = 0  # bytes the writer has written
        self._durable = 0  # bytes made durable by the writer's final fsync
        self._stopped = False
        self._read = 0  # bytes read back
        self._digest = ""
        self._failure: tuple[str, OSError] | None = None
        self._thread = threading.Thread(target=self._run, name="sysupd-readback", daemon=True)
        self._thread.start()

    def written(self, upto: int, *, durable: bool = False) -> None:
        """The image has ``upto`` bytes written (and fsynced, if ``durable``)."""
        with self._changed:
            self._written = upto
            if durable:
                self._durable = upto
            self._changed.notify()

    def finish(self) -> tuple[int, str, tuple[str, OSError] | None]:
        """Wait for the worker: bytes read back, their SHA-256 (hex), and what failed, if any."""
        self._thread.join()
        return self._read, self._digest, self._failure

    def stop(self) -> None:
        """Stop at the next stretch, and wait for the worker to end."""
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        digester = _Digester()
        doing = "reading back"
        try:
            while self._read < self._total:
                with self._changed:
                    while (
                        not self._stopped
                        and self._durable <= self._read
                        and (self._written - self._read < self._stretch)
                    ):
                        self._changed.wait()
                    if self._stopped:
                        return
                    end, durable = self._written, self._durable == self._written
                if not durable:
                    doing = "writing"
                    os.fsync(self._fd)
                    doing = "reading back"
                if not self._read_back(digester, end):
                    return
        except OSError as exc:
            self._failure = (doing, exc)
        finally:
            self._digest = digester.finish()

    def _read_back(self, digester: _Digester, end: int) -> bool:
        """Drop the cached pages of ``[read, end)``, read them from the slot, drop them again;
        False if short."""
        # Only the stronger check is lost if the kernel keeps the pages; the hash still runs.
        start = self._read
        advise_dontneed(self._fd, start, end - start)
        try:
            return self._read_stretch(digester, end)
        finally:
            # The pages just read are clean: freeing them now lets the next writes and reads
            # reuse warm page frames (see the module docstring).
            advise_dontneed(self._fd, start, self._read - start)

    def _read_stretch(self, digester: _Digester, end: int) -> bool:
        while self._read < end:
            buffer = digester.free.get()
            want = min(len(buffer), end - self._read)
            try:
                count = os.preadv(self._fd, [buffer[:want]], self._read)
            except BaseException:
                digester.free.put(buffer)
                raise
            if count == 0:
                digester.free.put(buffer)
                return False
            digester.hash(buffer[:count])
            self._read += count
        return True
