"""The chunk fetcher against an in-memory chunk store (a twin of the update server's): every
chunk is verified before it is handed out, bad ones are fetched once more, then refused by
name; missing ones are named; memory is bounded by its window."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from collections.abc import AsyncIterator

import pytest
import zstandard

from sysupd.core.cdc import DEFAULT_PARAMS
from sysupd.core.chunkindex import (
    ChunkIndex,
    encode_index,
    parse_index,
    store_path,
    stored_digest,
)
from sysupd.delta.fetch import ChunkFetcher, ChunkGet, MissingChunk, RateLimit
from sysupd.errors import AcquireError, VerificationError


class MemoryChunks:
    """A chunk store in memory that can serve wrong bytes a given number of times."""

    where = "the test store"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.bad_times: dict[str, int] = {}
        self.asked: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def open(self, parallel: int) -> AsyncIterator[ChunkGet]:
        async def get(path: str, max_bytes: int, deadline_s: float) -> bytes:
            with self._lock:
                self.asked.append(path)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await asyncio.sleep(0.001)  # the network: other requests run meanwhile
                return self.fetch(path, max_bytes, deadline_s)
            finally:
                with self._lock:
                    self.in_flight -= 1

        yield get

    def fetch(self, path: str, max_bytes: int, deadline_s: float) -> bytes:
        if path not in self.files:
            raise MissingChunk(f"{path}: 404")
        data = self.files[path]
        if self.bad_times.get(path, 0) > 0:
            self.bad_times[path] -= 1
            return bytes(len(data))
        return data[:max_bytes]


def _store(count: int) -> tuple[ChunkIndex, MemoryChunks, list[bytes]]:
    chunks = [os.urandom(20_000 + n) for n in range(count)]
    files = {}
    entries = []
    for chunk in chunks:
        frame = zstandard.ZstdCompressor().compress(chunk)
        digest = hashlib.sha256(chunk).digest()
        files[store_path(digest)] = frame
        entries.append((digest, stored_digest(frame), len(chunk), len(frame)))
    whole = b"".join(chunks)
    data = encode_index(len(whole), hashlib.sha256(whole).hexdigest(), DEFAULT_PARAMS, entries)
    return parse_index(data), MemoryChunks(files), chunks


def _fetcher(index: ChunkIndex, store: MemoryChunks, numbers: list[int]) -> ChunkFetcher:
    return ChunkFetcher(index, store, numbers, parallel=3, deadline_s=60, window=4)


def test_chunks_come_out_verified_and_in_order() -> None:
    index, store, chunks = _store(20)
    fetcher = _fetcher(index, store, list(range(20)))
    try:
        assert [fetcher.take(n) for n in range(20)] == chunks
    finally:
        fetcher.close()
    assert fetcher.tally.chunks == 20
    assert fetcher.tally.plain_bytes == sum(map(len, chunks))
    assert 2 <= store.most_in_flight <= 3  # concurrent, and no more than ``parallel``


def test_a_bad_chunk_is_fetched_once_more_and_then_used() -> None:
    index, store, chunks = _store(3)
    path = store_path(index.digest(1))
    store.bad_times[path] = 1
    fetcher = _fetcher(index, store, [0, 1, 2])
    try:
        assert fetcher.take(0) == chunks[0]
        assert fetcher.take(1) == chunks[1]
    finally:
        fetcher.close()
    assert store.asked.count(path) == 2
    assert fetcher.tally.refetched == 1


def test_a_chunk_bad_twice_is_refused_by_name() -> None:
    index, store, chunks = _store(3)
    path = store_path(index.digest(2))
    store.bad_times[path] = 2
    fetcher = _fetcher(index, store, [0, 1, 2])
    try:
        assert fetcher.take(0) == chunks[0]
        assert fetcher.take(1) == chunks[1]
        with pytest.raises(VerificationError, match=rf"chunk 2 \({path}\) .* fetched twice"):
            fetcher.take(2)
    finally:
        fetcher.close()


def test_missing_chunks_are_named() -> None:
    index, store, _ = _store(4)
    for number in (1, 3):
        del store.files[store_path(index.digest(number))]
    fetcher = _fetcher(index, store, [0, 1, 2, 3])
    try:
        fetcher.take(0)
        with pytest.raises(AcquireError, match=r"lacks chunks of the release: 1 \(chunks/"):
            fetcher.take(1)
    finally:
        fetcher.close()
    with pytest.raises(AcquireError, match=r"lacks chunks of the release: 3 \(chunks/"):
        fetcher.fetch_now(3)


def test_the_window_bounds_what_is_fetched_ahead() -> None:
    index, store, _ = _store(30)
    fetcher = _fetcher(index, store, list(range(30)))
    try:
        fetcher.take(0)
        threading.Event().wait(0.2)  # let the threads run ahead as far as they may
        assert len(store.asked) <= 1 + 4
    finally:
        fetcher.close()


def test_a_rate_limit_spaces_the_requests() -> None:
    now = [0.0]
    limit = RateLimit(1000, clock=lambda: now[0])
    limit.take(0)
    # The next 500 bytes may go at once (the budget starts now); what is waited for is the
    # budget's end, not the wall clock: two takes of 500 leave it one second ahead.
    limit.take(500)
    assert limit._next == pytest.approx(0.5)
    now[0] = 0.5
    limit.take(500)
    assert limit._next == pytest.approx(1.0)


def test_a_worker_that_breaks_unexpectedly_fails_the_take_instead_of_hanging() -> None:
    index, store, _ = _store(3)

    class Broken(MemoryChunks):
        def fetch(self, path: str, max_bytes: int, deadline_s: float) -> bytes:
            raise RuntimeError("a bug in the transport")

    broken = Broken(store.files)
    fetcher = ChunkFetcher(index, broken, [0, 1, 2], parallel=1, deadline_s=60)
    try:
        with pytest.raises(AcquireError, match="fetching chunk 0 failed unexpectedly"):
            fetcher.take(0)
    finally:
        fetcher.close()
