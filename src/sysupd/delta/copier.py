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
        for number, place in self._plan:
            with self._cond:
                while not self._stopped and self._next - self._taken >= self._window:
                    self._cond.wait()
                if self._stopped:
                    return
                self._next += 1
            entry = self._index.entry(number)
            try:
                data: bytes | None = place.seed.read_at(place.offset, entry.length)
            except OSError:
                data = None
            if data is not None and not hmac.compare_digest(
                hashlib.sha256(data).digest(), entry.digest
            ):
                data = None
            with self._cond:
                self._ready[number] = data
                self._cond.notify_all()
