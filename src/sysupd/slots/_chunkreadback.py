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
- The first mismatch or I/O error is kept and handed back by ``finish``; ``stop`` ends the
  worker at its next batch. Memory is the queue of (offset, length, digest) and one batch.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import deque

from sysupd.slots._durability import advise_dontneed

__all__ = ["ChunkReadBack"]

_BATCH_BYTES = 8 << 20  # chunks queued before the worker fsyncs and reads them back


class ChunkReadBack:
    """A worker that reads chunks back from ``fd`` and checks their SHA-256."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, int, bytes]] = deque()
        self._queued = 0
        self._durable = False
        self._stopped = False
        self.checked = 0
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="sysupd-chunk-readback", daemon=True)
        self._thread.start()

    def add(self, offset: int, length: int, digest: bytes) -> None:
        """The chunk at ``offset`` is in place (written, or kept); read it back in its turn."""
        with self._cond:
            self._queue.append((offset, length, digest))
            self._queued += length
            if self._queued >= _BATCH_BYTES:
                self._cond.notify()

    def finish(self) -> tuple[int, str | None]:
        """After the writer's final fsync: read back what is left; bytes checked, and what
        failed (``None``: every chunk matched)."""
        with self._cond:
            self._durable = True
            self._cond.notify()
        self._thread.join()
        return self.checked, self.failure

    def stop(self) -> None:
        """End the worker at its next batch."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
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
            if final:
                with self._cond:
                    if not self._queue:
                        return

    def _check(self, batch: list[tuple[int, int, bytes]]) -> bool:
        for offset, length, _ in batch:
            advise_dontneed(self._fd, offset, length)
        for offset, length, digest in batch:
            data = os.pread(self._fd, length, offset)
            if len(data) != length or not hmac.compare_digest(
                hashlib.sha256(data).digest(), digest
            ):
                self.failure = f"it reads back differently at byte {offset}: bad storage?"
                return False
            self.checked += length
        for offset, length, _ in batch:
            advise_dontneed(self._fd, offset, length)
        return True
