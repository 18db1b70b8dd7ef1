"""Making written files durable on a worker thread, one batch at a time, and freeing their pages.

Responsibility: take batches of open descriptors of completely written files (and of the
directories the writer is done with) from the tree writer, start the writeback of all of them,
then fsync each, drop its cached pages once they are clean, and close it, on a thread of its own,
so that waiting for the storage overlaps the writing of the next files.

Invariants:

- Every descriptor handed over is closed exactly once, here: after its batch was fsynced, after a
  failure, or when the syncer is closed.
- At most one batch is in flight: ``submit`` waits for the previous batch first. So the writer
  holds at most two batches of descriptors open (the one syncing, the one it fills), and at most
  two batches' pages are cached.
- A batch is durable once the ``submit`` after it, or ``finish``, returned without raising; the
  first failure is raised there (the ``OSError`` itself, for the writer to translate), and the
  batches after it are closed without being synced.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from contextlib import suppress

__all__ = ["BatchSyncer", "advise_dontneed"]


def advise_dontneed(fd: int, offset: int = 0, length: int = 0) -> None:
    """Tell the kernel a range of a file (0, 0: all of it) is not needed in the page cache.

    On Linux ``POSIX_FADV_DONTNEED`` starts writeback of the range's dirty pages, without waiting
    for it, and frees its clean pages: after a write it gets the disk going, after an fsync it
    frees the page frames for the next writes. Best effort: durability comes from fsync alone.
    """
    with suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class BatchSyncer:
    """A worker thread that fsyncs, uncaches and closes the batches of descriptors it is given."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[int, ...] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._in_flight = False
        self._failed = False
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="sysupd-tree-sync", daemon=True)
        self._thread.start()

    def submit(self, batch: Sequence[int]) -> None:
        """Wait for the batch before (raising its failure), then take ``batch`` over.

        Raises:
            OSError: the batch before could not be made durable; ``batch`` stays the caller's.
        """
        self._collect()
        self._jobs.put(tuple(batch))
        self._in_flight = True

    def finish(self) -> None:
        """Wait for the batch in flight; everything submitted is durable when this returns.

        Raises:
            OSError: a batch could not be made durable.
        """
        self._collect()

    def close(self) -> None:
        """Stop after the batch at hand, closing without syncing what is left; wait for it."""
        self._abandoned = True
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _collect(self) -> None:
        if self._in_flight:
            self._in_flight = False
            failure = self._results.get()
            if failure is not None:
                raise failure

    def _run(self) -> None:
        while (batch := self._jobs.get()) is not None:
            failure: BaseException | None = None
            try:
                if not (self._failed or self._abandoned):
                    for fd in batch:
                        advise_dontneed(fd)  # the whole batch's writeback in flight at once
                    for fd in batch:
                        os.fsync(fd)
                    for fd in batch:
                        advise_dontneed(fd)  # clean now: this only frees the page frames
            except BaseException as exc:  # noqa: BLE001 - raised in the writer's thread
                failure = exc
                self._failed = True
            finally:
                for fd in batch:
                    with suppress(OSError):
                        os.close(fd)
            self._results.put(failure)
