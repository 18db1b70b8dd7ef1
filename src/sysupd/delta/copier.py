"""Copying chunks from seeds ahead of the writer: read and hashed on a thread of their own.

``SeedCopier`` is given the chunks the plan copies from seeds, in the order they will be
written; its thread reads each from its seed and checks it against its signed hash while the
writer writes the ones before (hashlib lets go of the GIL, so this runs beside the writer and the
read-back on another core).

Invariants: at most ``window`` chunks (``_WINDOW_BYTES`` of the largest) are read and not yet
taken, so memory stays bounded; a chunk is handed out only if its bytes matched their signed hash
(else ``None``: the caller fetches it); only this thread reads the seeds while it runs.
"""

from __future__ import annotations

import hashlib
import hmac
import threading

from sysupd.core.chunkindex import ChunkIndex
from sysupd.delta.seeds import Found
from sysupd.errors import AcquireError

__all__ = ["SeedCopier"]

_WINDOW_BYTES = 8 << 20  # read and not yet taken, at most
_RUN_BYTES = 1 << 20  # chunks end to end in a seed read with one call, at most


class SeedCopier:
    """Reads the chunks ``plan`` names (number and place, in write order) ahead of ``take``."""

    def __init__(
        self, index: ChunkIndex, plan: list[tuple[int, Found]], window: int | None = None
    ) -> None:
        self._index = index
        self._plan = plan
        self._window = window or max(2, _WINDOW_BYTES // index.params.max_bytes)
        self._cond = threading.Condition()
        self._ready: dict[int, bytes | None] = {}
        self._next = 0
        self._taken = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sysupd-seed-copy", daemon=True)
        if plan:
            self._thread.start()

    def take(self, number: int) -> bytes | None:
        """Chunk ``number``'s bytes if its copy matched its signed hash, else ``None``; the next
        of the plan (waits for it)."""
        with self._cond:
            while number not in self._ready:
                if not self._thread.is_alive():
                    raise AcquireError(f"the seed copier stopped before chunk {number}")
                self._cond.wait(1.0)
            self._taken += 1
            self._cond.notify_all()
            return self._ready.pop(number)

    def close(self) -> None:
        """Stop the thread; chunks not taken are dropped."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._ready.clear()

    def _run(self) -> None:
        position = 0
        while position < len(self._plan):
            run = self._contiguous(position)
            with self._cond:
                while not self._stopped and self._next - self._taken >= self._window:
                    self._cond.wait()
                if self._stopped:
                    return
                self._next += len(run)
            results = self._read(run)
            with self._cond:
                self._ready.update(results)
                self._cond.notify_all()
            position += len(run)

    def _contiguous(self, position: int) -> list[tuple[int, Found]]:
        """The plan's entries from ``position`` that lie end to end in one seed (up to
        ``_RUN_BYTES`` and the window): read with one call."""
        run = [self._plan[position]]
        number, place = run[0]
        end = place.offset + self._index.entry(number).length
        while len(run) < self._window and position + len(run) < len(self._plan):
            number, place = self._plan[position + len(run)]
            length = self._index.entry(number).length
            if place.seed is not run[0][1].seed or place.offset != end:
                break
            if end + length - run[0][1].offset > _RUN_BYTES:
                break
            run.append((number, place))
            end += length
        return run

    def _read(self, run: list[tuple[int, Found]]) -> dict[int, bytes | None]:
        """Each chunk of ``run`` read (in one call) and checked, or ``None``."""
        start = run[0][1].offset
        lengths = [self._index.entry(number).length for number, _ in run]
        try:
            data = run[0][1].seed.read_at(start, sum(lengths))
        except OSError:
            data = b""
        results: dict[int, bytes | None] = {}
        at = 0
        view = memoryview(data)
        for (number, _), length in zip(run, lengths, strict=True):
            piece = view[at : at + length]
            at += length
            ok = len(piece) == length and hmac.compare_digest(
                hashlib.sha256(piece).digest(), self._index.digest(number)
            )
            results[number] = bytes(piece) if ok else None
        return results
