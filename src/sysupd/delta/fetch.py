"""Fetching the chunks a device lacks from the chunk store: concurrent, bounded, verified.

``ChunkFetcher`` is given the chunks to fetch, in the order they will be written, and fetches
them ahead while the writer takes them one by one. Each chunk's stored file is checked against
its signed length and stored hash before it is decompressed (with its signed plain length as the
cap), and the plain bytes against its signed hash after: nothing unverified is handed out or
parsed.

The requests run on one thread, as coroutines of an event loop (the store's ``open`` gives the
loop its client): a delta install asks for some hundred small files a GiB changed, and on a
thread each costs the interpreter's time and lock far more than the bytes do (measured on
loopback: 872 chunks took 0.85 s of CPU on four threads, 0.4 s as coroutines), time the seed
pass running beside the fetch needs.

Invariants:

- At most ``parallel`` requests at a time, and at most ``window`` chunks fetched but not yet
  taken (by default as many as fit in ``_WINDOW_BYTES`` of the index's largest chunk), so memory
  is bounded whatever the payload's size. A failure of the fetching thread for any reason is
  handed to ``take``, which also gives up past the deadline or when the thread is gone.
- A chunk whose bytes do not match is fetched once more; a second mismatch fails the update
  naming the chunk. A chunk the server lacks fails it naming every missing chunk seen so far.
- Limits: each request has the store's per-transfer limits (stall, minimum rate) and a cap of
  the chunk's signed stored length; all of them together share one deadline (``deadline_s``)
  and, if set, one rate (``max_rate_bps``).
- Errors: ``AcquireError`` for the transport (missing chunks, limits), ``VerificationError`` for
  chunks that are not the signed ones. After the first error no new request starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import zstandard

from sysupd.core.chunkindex import ChunkEntry, ChunkIndex, store_path, stored_digest
from sysupd.errors import AcquireError, UpdateError, VerificationError

__all__ = [
    "ChunkFetcher",
    "ChunkGet",
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


ChunkGet = Callable[[str, int, float], Awaitable[bytes]]
"""``await get(path, max_bytes, deadline_s)``: the file at ``path`` under the store's base
(``chunks/ab/abcd….zst``), at most ``max_bytes``, within ``deadline_s`` seconds.

Raises:
    MissingChunk: the store has no such file.
    AcquireError: any other failure.
"""


class ChunkSource(Protocol):
    """Where stored chunks come from: the update server's chunk store."""

    @property
    def where(self) -> str:
        """For people: "the update server nas.lan:8080"."""
        ...

    def open(self, parallel: int) -> AbstractAsyncContextManager[ChunkGet]:
        """A client of the store for the running event loop, for up to ``parallel`` requests
        at a time; closed when the context ends."""
        ...


@dataclass(slots=True)
class FetchTally:
    """What came over the network so far."""

    chunks: int = 0
    plain_bytes: int = 0
    stored_bytes: int = 0
    refetched: int = 0


class RateLimit:
    """A byte budget per second shared by the requests (0: none)."""

    def __init__(self, bytes_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = bytes_per_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next = clock()

    def wait_s(self, count: int, deadline: float = math.inf) -> float:
        """How long to wait before ``count`` more bytes fit in the rate (not past ``deadline``,
        monotonic); the bytes are counted as sent then."""
        if self._rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            start = max(self._next, now)
            self._next = start + count / self._rate
        return max(0.0, min(start, deadline) - now)

    def take(self, count: int, deadline: float = math.inf) -> None:
        """Wait until ``count`` more bytes fit in the rate (not past ``deadline``, monotonic)."""
        if wait := self.wait_s(count, deadline):
            time.sleep(wait)


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
        self._parallel = max(1, parallel)
        self._deadline = time.monotonic() + deadline_s
        self._rate = RateLimit(max_rate_bps)
        # Bounded in bytes, not chunks: a signed index may use chunks of up to 4 MiB.
        fits = max(1, _WINDOW_BYTES // index.params.max_bytes)
        self._window = max(self._parallel, window or min(self._parallel * 4, fits))
        self._cond = threading.Condition()
        self._taken = 0  # how many of numbers were taken
        self._scheduled = 0  # how many of numbers were asked for
        self._ready: dict[int, bytes] = {}
        self._failed: dict[int, BaseException] = {}
        self._missing: list[ChunkEntry] = []
        self._stopped = False  # no new requests: closed, or a request failed
        self._broken: BaseException | None = None  # the fetching thread's own failure
        self.tally = FetchTally()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room: asyncio.Semaphore | None = None  # chunks that may be fetched ahead
        self._closing: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        if numbers:
            started = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(started,), name="sysupd-fetch", daemon=True
            )
            self._thread.start()
            started.wait()

    def take(self, number: int) -> bytes:
        """Chunk ``number``'s verified bytes (the next of ``numbers``; waits for it).

        Raises:
            AcquireError, VerificationError: it could not be had, or not as signed.
        """
        with self._cond:
            if self._taken >= len(self._numbers) or self._numbers[self._taken] != number:
                raise AssertionError(f"chunk {number} taken out of order")
            while number not in self._ready and number not in self._failed:
                if self._broken is not None:
                    raise AcquireError(
                        f"fetching chunk {number} failed unexpectedly: {self._broken!r}"
                    )
                alive = self._thread is not None and self._thread.is_alive()
                if not alive or (self._stopped and self._taken >= self._scheduled):
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
            data = self._ready.pop(number)
        self._in_loop(self._make_room)
        return data

    def next_ready(self) -> bool:
        """Whether the next chunk to take is fetched (or failed), so ``take`` returns (or
        raises) at once; ``False`` when it is still coming, or no chunk is left. (``take`` also
        raises at once when the fetching thread is gone or time is up: that surfaces at the
        next waiting ``take``.)"""
        with self._cond:
            if self._taken >= len(self._numbers):
                return False
            number = self._numbers[self._taken]
            return number in self._ready or number in self._failed

    def fetch_now(self, number: int) -> bytes:
        """Chunk ``number`` fetched at once in this thread (a seed's copy of it was bad), with
        a client of its own: also after ``close``.

        Raises:
            AcquireError, VerificationError: as ``take``.
        """
        entry = self._index.entry(number)

        async def fetch() -> bytes:
            async with self._source.open(1) as get:
                return await self._fetch(get, entry)

        try:
            return asyncio.run(fetch())
        except MissingChunk:
            raise AcquireError(self._missing_text([entry])) from None

    def close(self) -> None:
        """Stop fetching; chunks not taken are dropped."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._in_loop(self._stop)
        if self._thread is not None:
            self._thread.join()
        self._ready.clear()

    # -- the fetching thread -------------------------------------------------------------------

    def _run(self, started: threading.Event) -> None:
        try:
            asyncio.run(self._main(started))
        except BaseException as exc:  # noqa: BLE001 - handed to take(), which raises it
            with self._cond:
                self._broken = exc
                self._stopped = True
                self._cond.notify_all()
        finally:
            started.set()
            with self._cond:
                self._cond.notify_all()  # a take waiting sees the thread gone

    async def _main(self, started: threading.Event) -> None:
        """Ask for the chunks in order, as the window and ``parallel`` allow, until closed."""
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Semaphore(self._window)
        self._closing = asyncio.Event()
        started.set()
        tasks: set[asyncio.Task[None]] = set()
        async with self._source.open(self._parallel) as get:
            asking = asyncio.create_task(self._ask(get, tasks))
            try:
                await self._closing.wait()
            finally:
                for task in (asking, *tasks):
                    task.cancel()
                await asyncio.gather(asking, *tasks, return_exceptions=True)

    async def _ask(self, get: ChunkGet, tasks: set[asyncio.Task[None]]) -> None:
        assert self._room is not None
        requests = asyncio.Semaphore(self._parallel)
        for number in self._numbers:
            await self._room.acquire()
            await requests.acquire()
            if self._stopped:  # checked with no wait before the count: take() relies on it
                return
            with self._cond:
                self._scheduled += 1
            task = asyncio.create_task(self._one(get, number, requests))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _one(self, get: ChunkGet, number: int, requests: asyncio.Semaphore) -> None:
        entry = self._index.entry(number)
        try:
            data = await self._fetch(get, entry)
        except MissingChunk:
            with self._cond:
                self._missing.append(entry)
                self._failed[number] = AcquireError("missing")
                self._cond.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to take(), which raises it
            with self._cond:
                self._failed[number] = exc
                self._stopped = True  # no new requests after a failure
                self._cond.notify_all()
        else:
            with self._cond:
                self._ready[number] = data
                self._cond.notify_all()
        finally:
            requests.release()

    def _in_loop(self, call: Callable[[], None]) -> None:
        """``call()`` on the fetching thread, if it still runs."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing is left to wake
                loop.call_soon_threadsafe(call)

    def _make_room(self) -> None:
        if self._room is not None:
            self._room.release()

    def _stop(self) -> None:
        if self._closing is not None:
            self._closing.set()

    async def _fetch(self, get: ChunkGet, entry: ChunkEntry) -> bytes:
        """One chunk, verified; a mismatch is fetched once more."""
        for attempt in (1, 2):
            if wait := self._rate.wait_s(entry.stored_length, self._deadline):
                await asyncio.sleep(wait)
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise AcquireError(
                    "the chunks could not all be downloaded within the update server's time "
                    f"limit (at chunk {entry.number})"
                )
            stored = await get(store_path(entry.digest), entry.stored_length, left)
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
