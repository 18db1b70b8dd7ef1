"""Reading a delta-written raw slot back from the storage, chunk by chunk, in any order.

Responsibility: the proof half of ``RawPatch``. A delta install writes chunks wherever the plan
finds them first, so the image is not final from its start on, and the full install's
sequential whole-image read-back (``_readback``) would wait until the end. Each chunk has its
own signed hash, though: this worker reads back each chunk once it is written (or kept), after an
fsync that covered it and with its cached pages dropped, and checks it against that hash. Every
chunk of the image checked this way is the whole image checked.

Invariants:

- No chunk is read back before an fsync that covered it returned: the worker fsyncs before each
  batch (``_BATCH_BYTES``), and the writer's final fsync covers the rest.
- It runs on its own thread (hashlib lets go of the GIL), so the read-back overlaps the writing.
- System calls go by runs of chunks that lie end to end, not by chunk (a GiB has some 40,000):
  one uncaching a stretch before and after, one read a run of up to ``_RUN_BYTES``.
- The first mismatch or I/O error is kept and handed back by ``finish``; ``stop`` ends the
  worker at its next batch. Memory is the queue of (offset, length, digest) and one run's
  buffer. (Comparing each written chunk with the bytes written, instead of hashing it, was
  measured: a little quicker, but holding those bytes cost 20 to 40 MiB of peak memory.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from sysupd.slots._durability import advise_dontneed

__all__ = ["ChunkReadBack"]

_BATCH_BYTES = 8 << 20  # chunks queued before the worker fsyncs and reads them back
_RUN_BYTES = 1 << 20  # chunks read back with one system call, at most (unless one is larger)


@dataclass(frozen=True, slots=True)
class _Chunk:
    offset: int
    length: int
    digest: bytes

    @property
    def end(self) -> int:
        return self.offset + self.length


class ChunkReadBack:
    """A worker that reads chunks back from ``fd`` and checks their SHA-256."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._cond = threading.Condition()
        self._queue: deque[_Chunk] = deque()
        self._queued = 0
        self._durable = False
        self._stopped = False
        self.checked = 0
        self.failure: str | None = None
        self._buffer = bytearray(_RUN_BYTES)
        self._thread = threading.Thread(target=self._run, name="sysupd-chunk-readback", daemon=True)
        self._thread.start()

    def add(self, offset: int, length: int, digest: bytes) -> None:
        """The chunk at ``offset`` is in place (written, or kept); read it back in its turn."""
        with self._cond:
            self._queue.append(_Chunk(offset, length, digest))
            self._queued += length
            if self._queued >= _BATCH_BYTES:
                self._cond.notify_all()

    def finish(self) -> tuple[int, str | None]:
        """After the writer's final fsync: read back what is left; bytes checked, and what
        failed (``None``: every chunk matched)."""
        with self._cond:
            self._durable = True
            self._cond.notify_all()
        self._thread.join()
        return self.checked, self.failure

    def stop(self) -> None:
        """End the worker at its next batch."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopped or self._durable or self._queued >= _BATCH_BYTES):
                    self._cond.wait()
                if self._stopped:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._queued = 0
                final = self._durable
            try:
                if not final:
                    os.fsync(self._fd)
                if not self._check(batch):
                    return
            except OSError as exc:
                self.failure = f"reading it back failed: {exc}"
                return
            except Exception as exc:  # noqa: BLE001 - a bug: failed with its reason, not silently
                self.failure = f"reading it back failed unexpectedly: {exc!r}"
                return
            if final:
                with self._cond:
                    if not self._queue:
                        return

    def _check(self, batch: list[_Chunk]) -> bool:
        """Read back and check the chunks of ``batch``: the cached pages of each stretch of
        chunks that lie end to end dropped at once (so the kernel's read-ahead runs across the
        stretch, not only across one read), then each run of it read with one system call into
        a buffer kept from batch to batch (40,000 chunks a GiB: calls a run, not a chunk)."""
        batch.sort(key=lambda chunk: chunk.offset)
        stretches = [(run[0].offset, run[-1].end) for run in _runs(batch, limit=None)]
        for start, end in stretches:
            advise_dontneed(self._fd, start, end - start)
        for run in _runs(batch, limit=_RUN_BYTES):
            start = run[0].offset
            size = run[-1].end - start
            if len(self._buffer) < size:
                self._buffer = bytearray(size)
            with memoryview(self._buffer) as whole, whole[:size] as view:
                count = os.preadv(self._fd, [view], start)
            for chunk in run:
                if not self._matches(chunk, chunk.offset - start, count):
                    self.failure = f"it reads back differently at byte {chunk.offset}: bad storage?"
                    return False
                self.checked += chunk.length
        for start, end in stretches:
            advise_dontneed(self._fd, start, end - start)
        return True

    def _matches(self, chunk: _Chunk, at: int, count: int) -> bool:
        """Whether the chunk read back at ``at`` of the buffer (``count`` bytes read) has its
        signed hash."""
        if at + chunk.length > count:
            return False
        with memoryview(self._buffer) as whole, whole[at : at + chunk.length] as read:
            return hmac.compare_digest(hashlib.sha256(read).digest(), chunk.digest)


def _runs(batch: list[_Chunk], *, limit: int | None) -> Iterator[list[_Chunk]]:
    """The chunks of ``batch`` (sorted) in runs that lie end to end, each of at most ``limit``
    bytes (or one chunk)."""
    run: list[_Chunk] = []
    for chunk in batch:
        if run and (
            chunk.offset != run[-1].end or (limit is not None and chunk.end - run[0].offset > limit)
        ):
            yield run
            run = []
        run.append(chunk)
    if run:
        yield run
