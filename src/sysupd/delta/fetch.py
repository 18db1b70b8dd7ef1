"""Fetching the chunks a device lacks from the chunk store: parallel, bounded, verified.

``ChunkFetcher`` is given the chunks to fetch, in the order they will be written, and fetches
them ahead on a few threads while the writer takes them one by one. Each chunk's stored file is
checked against its signed length and stored hash before it is decompressed (with its signed
plain length as the cap), and the plain bytes against its signed hash after: nothing unverified
is handed out or parsed.

Invariants:

- At most ``parallel`` requests at a time, and at most ``window`` chunks fetched but not yet
  taken (by default as many as fit in ``_WINDOW_BYTES`` of the index's largest chunk), so memory
  is bounded whatever the payload's size. A worker that fails for any reason hands it to
  ``take``, which also gives up past the deadline or when no worker is left.
- A chunk whose bytes do not match is fetched once more; a second mismatch fails the update
  naming the chunk. A chunk the server lacks fails it naming every missing chunk seen so far.
- Limits: each request has the update server's per-transfer limits (stall, minimum rate) and a
  cap of the chunk's signed stored length; all of them together share one deadline
  (``deadline_s``) and, if set, one rate (``max_rate_bps``).
- Errors: ``AcquireError`` for the transport (missing chunks, limits), ``VerificationError`` for
  chunks that are not the signed ones. After the first error no new request starts.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import zstandard

from sysupd.core.chunkindex import ChunkEntry, ChunkIndex, store_path, stored_digest
from sysupd.errors import AcquireError, UpdateError, VerificationError

__all__ = [
    "ChunkFetcher",
    "ChunkSource",
    "DeltaOptions",
    "FetchTally",
    "MissingChunk",
    "RateLimit",
]


_WINDOW_BYTES = 32 << 20  # fetched and not yet taken, at most (and ``parallel`` chunks)


class MissingChunk(AcquireError):
    """The chunk store has no file for a chunk (HTTP 404)."""


@dataclass(frozen=True, slots=True)
class DeltaOptions:
    """How chunks are fetched: requests at a time, the rate cap (0: none), the total time."""

    parallel: int = 4
    max_rate_bps: int = 0
    deadline_s: float = 3600.0


class ChunkSource(Protocol):
    """Where stored chunks come from: the update server's chunk store."""

    @property
    def where(self) -> str:
        """For people: "the update server nas.lan:8080"."""
        ...

    def fetch(self, path: str, max_bytes: int, deadline_s: float) -> bytes:
        """The file at ``path`` under the store's base (``chunks/ab/abcd….zst``), at most
        ``max_bytes``, within ``deadline_s`` seconds.

        Raises:
            MissingChunk: the store has no such file.
            AcquireError: any other failure.
        """
        ...


@dataclass(slots=True)
class FetchTally:
    """What came over the network so far."""

    chunks: int = 0
    plain_bytes: int = 0
    stored_bytes: int = 0
    refetched: int = 0


class RateLimit:
    """A byte budget per second shared by the fetching threads (0: none)."""

    def __init__(self, bytes_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = bytes_per_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next = clock()

    def take(self, count: int, deadline: float = math.inf) -> None:
        """Wait until ``count`` more bytes fit in the rate (not past ``deadline``, monotonic)."""
        if self._rate <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(self._next, now)
            self._next = start + count / self._rate
        if start > now:
            time.sleep(max(0.0, min(start, deadline) - now))


class ChunkFetcher:
    """Fetches ``numbers`` (chunks of ``index``, in order) ahead of ``take``."""

    def __init__(
        self,
        index: ChunkIndex,
        source: ChunkSource,
        numbers: list[int],
        *,
        parallel: int,
        deadline_s: float,
        max_rate_bps: int = 0,
        window: int | None = None,
    ) -> None:
        self._index = index
        self._source = source
        self._numbers = numbers
        self._deadline = time.monotonic() + deadline_s
        self._rate = RateLimit(max_rate_bps)
        # Bounded in bytes, not chunks: a signed index may use chunks of up to 4 MiB.
        fits = max(1, _WINDOW_BYTES // index.params.max_bytes)
        self._window = max(parallel, window or min(parallel * 4, fits))
        self._cond = threading.Condition()
        self._next = 0  # position in numbers of the next chunk to request
        self._taken = 0  # how many of numbers were taken
        self._ready: dict[int, bytes] = {}
        self._failed: dict[int, BaseException] = {}
        self._missing: list[ChunkEntry] = []
        self._stopped = False
        self.tally = FetchTally()
        self._threads = [
            threading.Thread(target=self._work, name=f"sysupd-fetch-{n}", daemon=True)
            for n in range(min(parallel, len(numbers)))
        ]
        for thread in self._threads:
            thread.start()

    def take(self, number: int) -> bytes:
        """Chunk ``number``'s verified bytes (the next of ``numbers``; waits for it).

        Raises:
            AcquireError, VerificationError: it could not be had, or not as signed.
        """
        with self._cond:
            if self._taken >= len(self._numbers) or self._numbers[self._taken] != number:
                raise AssertionError(f"chunk {number} taken out of order")
            while number not in self._ready and number not in self._failed:
                if not any(thread.is_alive() for thread in self._threads):
                    raise AcquireError(
                        f"the chunk fetcher stopped before chunk {number} (closed, or failed "
                        "earlier)"
                    )
                if time.monotonic() > self._deadline:
                    raise AcquireError(
                        "the chunks could not all be downloaded within the update server's "
                        f"time limit (waiting for chunk {number})"
                    )
                self._cond.wait(1.0)
            if number in self._failed:
                raise self._error(number)
            self._taken += 1
            self._cond.notify_all()
            return self._ready.pop(number)

    def next_ready(self) -> bool:
        """Whether the next chunk to take is fetched (or failed), so ``take`` returns (or
        raises) at once; ``False`` when it is still coming, or no chunk is left. (``take`` also
        raises at once when no worker is left or time is up: that surfaces at the next
        waiting ``take``.)"""
        with self._cond:
            if self._taken >= len(self._numbers):
                return False
            number = self._numbers[self._taken]
            return number in self._ready or number in self._failed

    def fetch_now(self, number: int) -> bytes:
        """Chunk ``number`` fetched at once in this thread (a seed's copy of it was bad).

        Raises:
            AcquireError, VerificationError: as ``take``.
        """
        entry = self._index.entry(number)
        try:
            return self._fetch(entry, worker=False)
        except MissingChunk:
            raise AcquireError(self._missing_text([entry])) from None

    def close(self) -> None:
        """Stop the threads; chunks not taken are dropped."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._ready.clear()

    def _work(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._stopped
                    and self._next < len(self._numbers)
                    and self._next - self._taken >= self._window
                ):
                    self._cond.wait()
                if self._stopped or self._next >= len(self._numbers):
                    return
                number = self._numbers[self._next]
                self._next += 1
            entry = self._index.entry(number)
            try:
                data = self._fetch(entry, worker=True)
            except MissingChunk:
                with self._cond:
                    self._missing.append(entry)
                    self._failed[number] = AcquireError("missing")
                    self._cond.notify_all()
                continue
            except BaseException as exc:  # noqa: BLE001 - handed to take(), which raises it
                with self._cond:
                    self._failed[number] = exc
                    self._stopped = True  # no new requests after a failure
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[number] = data
                self._cond.notify_all()

    def _fetch(self, entry: ChunkEntry, *, worker: bool) -> bytes:
        """One chunk, verified; a mismatch is fetched once more."""
        for attempt in (1, 2):
            self._rate.take(entry.stored_length, self._deadline)
            left = self._deadline - time.monotonic()
            if left <= 0 or (worker and self._stopped):
                raise AcquireError(
                    "the chunks could not all be downloaded within the update server's time "
                    f"limit (at chunk {entry.number})"
                    if left <= 0
                    else "the chunk fetcher was stopped"
                )
            stored = self._source.fetch(store_path(entry.digest), entry.stored_length, left)
            problem = _check(entry, stored)
            if isinstance(problem, bytes):
                with self._cond:
                    self.tally.chunks += 1
                    self.tally.plain_bytes += entry.length
                    self.tally.stored_bytes += len(stored)
                return problem
            if attempt == 1:
                with self._cond:
                    self.tally.refetched += 1
                continue
            raise VerificationError(
                f"chunk {entry.number} ({store_path(entry.digest)}) from {self._source.where} "
                f"does not match its signed hash, fetched twice: {problem}"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, number: int) -> BaseException:
        failure = self._failed[number]
        if self._missing and any(entry.number == number for entry in self._missing):
            return AcquireError(self._missing_text(self._missing))
        if isinstance(failure, UpdateError):
            return failure
        return AcquireError(f"fetching chunk {number} failed unexpectedly: {failure!r}")

    def _missing_text(self, entries: list[ChunkEntry]) -> str:
        shown = sorted(entries, key=lambda entry: entry.number)
        names = ", ".join(f"{e.number} ({store_path(e.digest)})" for e in shown[:5])
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        return (
            f"{self._source.where} lacks chunks of the release: {names}{more} — the chunk "
            "store is incomplete (publish it again, or turn delta_updates off)"
        )


def _check(entry: ChunkEntry, stored: bytes) -> bytes | str:
    """The chunk's plain bytes if ``stored`` is its signed stored file, else why not."""
    if len(stored) != entry.stored_length:
        return f"{len(stored)} bytes instead of {entry.stored_length}"
    if not hmac.compare_digest(stored_digest(stored), entry.stored_digest):
        return "its stored bytes have another SHA-256"
    try:  # signed bytes only reach zstd; the cap is the signed plain length
        plain = zstandard.ZstdDecompressor().decompress(stored, max_output_size=entry.length)
    except zstandard.ZstdError as exc:
        return f"it does not decompress ({exc})"
    if len(plain) != entry.length or not hmac.compare_digest(
        hashlib.sha256(plain).digest(), entry.digest
    ):
        return "its plain bytes have another SHA-256"
    return plain
