"""Reading a delta-written raw slot back from the storage, by the blocks of its signed chunk list.

Responsibility: the proof half of ``RawPatch``. A delta install writes content-defined chunks
wherever the plan finds them first, so the image is not final from its start on, and the full
install's sequential whole-image read-back (``_readback``) would wait until the end. The release
also signs the SHA-256 of each fixed-size block of the image (its chunk list, the same one a full
install checks as it streams): this worker reads back each block once every byte of it is in place
(written, or kept), after an fsync that covered it and with its cached pages dropped, and checks
it against that hash. Every block checked is the whole image checked.

Why blocks and not the content-defined chunks, which have signed hashes too: a block is some
4 MiB, a chunk some 40 KiB, so a GiB is read back with 250 hash calls instead of 25,000, and the
threads of an install hand the interpreter's lock to each other that much less often (measured:
0.3 s less of a 1.3 GiB delta install's 2.8 s).

Invariants:

- No block is read back before an fsync that covered it returned: the worker fsyncs before each
  batch (``_BATCH_BYTES``), and the writer's final fsync covers the rest.
- A block is read back once, when as many bytes of it are placed as it has. Placing a byte
  twice is the caller's bug (``RawPatch``'s callers place each chunk once): one that makes a
  block overflow is refused (``placed`` raises); one that does not may get a block read back
  before it is whole, which can only fail its hash (or find the storage right), never pass
  bytes that are wrong, and ``RawPatch.finish`` then finds the image's count off.
- It runs on its own thread (hashlib lets go of the interpreter's lock), so the read-back
  overlaps the writing. Memory is one ``_READ_BYTES`` buffer, a count of bytes still missing per
  block, and the queue of block numbers; a block is hashed a piece at a time, whatever its size.
- The first mismatch or I/O error is kept and handed back by ``finish``; ``stop`` ends the
  worker at its next batch.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Iterator
from itertools import groupby

from sysupd.core.chunks import ChunkList
from sysupd.slots._durability import advise_dontneed

__all__ = ["BlockReadBack"]

_BATCH_BYTES = 8 << 20  # blocks queued before the worker fsyncs and reads them back
_READ_BYTES = 1 << 20  # one read from the slot


class BlockReadBack:
    """A worker that reads the blocks of ``blocks`` back from ``fd`` as they are completed, and
    checks their SHA-256."""

    def __init__(self, fd: int, blocks: ChunkList) -> None:
        self._fd = fd
        self._blocks = blocks
        self._missing = [blocks.span(n)[1] for n in range(blocks.count)]
        self._cond = threading.Condition()
        self._queue: list[int] = []
        self._queued = 0
        self._durable = False
        self._stopped = False
        self.checked = 0
        self.failure: str | None = None
        self._buffer = bytearray(min(_READ_BYTES, max(1, blocks.chunk_size)))
        self._thread = threading.Thread(target=self._run, name="sysupd-block-readback", daemon=True)
        self._thread.start()

    def placed(self, offset: int, length: int) -> None:
        """Bytes ``offset`` to ``offset + length`` are in place (written, or kept); each block
        they complete is read back in its turn.

        Raises:
            ValueError: they overfill a block (some were placed before), or lie past the
                image's end.
        """
        size, end = self._blocks.chunk_size, offset + length
        if offset < 0 or end > self._blocks.length:
            raise ValueError(f"bytes {offset}-{end - 1} lie past the image's end")
        done: list[int] = []
        number = offset // size
        while offset < end:
            take = min(end, (number + 1) * size) - offset
            left = self._missing[number] - take
            if left < 0:
                raise ValueError(f"bytes of block {number} were placed twice")
            self._missing[number] = left
            if left == 0:
                done.append(number)
            offset += take
            number += 1
        if done:
            with self._cond:
                self._queue.extend(done)
                self._queued += sum(self._blocks.span(n)[1] for n in done)
                if self._queued >= _BATCH_BYTES:
                    self._cond.notify_all()

    def finish(self) -> tuple[int, str | None]:
        """After the writer's final fsync: read back what is left; bytes checked, and what
        failed (``None``: every block read back matched)."""
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
                batch, self._queue, self._queued = self._queue, [], 0
                final = self._durable
            try:
                if not final:
                    os.fsync(self._fd)
                if not self._check(sorted(batch)):
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

    def _check(self, batch: list[int]) -> bool:
        """Read back and check the blocks ``batch`` (sorted): the cached pages of each stretch
        of consecutive blocks dropped at once (so the kernel's read-ahead runs across the
        stretch), then each block read and hashed a piece at a time."""
        stretches = [self._stretch(run) for run in _consecutive(batch)]
        for start, end in stretches:
            advise_dontneed(self._fd, start, end - start)
        for number in batch:
            if not self._matches(number):
                start, length = self._blocks.span(number)
                self.failure = (
                    f"it reads back differently in bytes {start}-{start + length - 1}: bad storage?"
                )
                return False
            self.checked += self._blocks.span(number)[1]
        for start, end in stretches:
            advise_dontneed(self._fd, start, end - start)
        return True

    def _stretch(self, run: list[int]) -> tuple[int, int]:
        start = self._blocks.span(run[0])[0]
        last, length = self._blocks.span(run[-1])
        return start, last + length

    def _matches(self, number: int) -> bool:
        """Whether block ``number`` reads back with its signed hash."""
        at, length = self._blocks.span(number)
        end = at + length
        digest = hashlib.sha256()
        with memoryview(self._buffer) as whole:
            while at < end:
                with whole[: min(len(whole), end - at)] as view:
                    count = os.preadv(self._fd, [view], at)
                    if count == 0:
                        return False
                    with view[:count] as read:
                        digest.update(read)
                at += count
        return hmac.compare_digest(digest.digest(), self._blocks.digest(number))


def _consecutive(numbers: list[int]) -> Iterator[list[int]]:
    """``numbers`` (sorted) in runs of consecutive ones."""
    for _, run in groupby(enumerate(numbers), key=lambda pair: pair[1] - pair[0]):
        yield [number for _, number in run]
