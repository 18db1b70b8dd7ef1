"""The verified stream's read-ahead: chunks are hashed on a worker thread beside the consumer.

The worker must never let a byte out before its chunk is checked, must hand errors out in payload
order, must stop after the last chunk, on an error, on ``close`` and when the reader is dropped,
and must keep memory at a fixed number of chunk buffers.
"""

from __future__ import annotations

import gc
import io
import os
import threading
import time
import tracemalloc

import pytest

from sysupd.core.chunks import ChunkVerifier, chunk_digests
from sysupd.engine.stream import MAX_READ_AHEAD, VerifiedReader, drain
from sysupd.errors import AcquireError, VerificationError
from tests.test_verified_stream import FailingSource, ReadOnlySource, read_all

KiB = 1 << 10
MiB = 1 << 20


class RecordingVerifier(ChunkVerifier):
    """A verifier that records which chunks it accepted, and from which thread."""

    def __init__(self, data: bytes, chunk_size: int, *, slow: float = 0.0) -> None:
        super().__init__(chunk_digests(data, chunk_size), chunk_size, len(data))
        self.accepted: list[int] = []
        self.threads: set[int] = set()
        self._slow = slow

    def check(self, chunk: bytes | memoryview) -> None:
        if self._slow:
            time.sleep(self._slow)  # the consumer runs ahead of the worker
        index = self.bytes_checked // self.chunk_size
        super().check(chunk)
        self.threads.add(threading.get_ident())
        self.accepted.append(index)


def verify_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sysupd-verify"]


def reader_for(
    data: bytes, chunk_size: int, depth: int = 1, source: object = None, **kwargs: object
) -> tuple[VerifiedReader, RecordingVerifier]:
    verifier = RecordingVerifier(data, chunk_size)
    reader = VerifiedReader(source or io.BytesIO(data), verifier, **kwargs)  # type: ignore[arg-type]
    reader.read_ahead(depth)
    return reader, verifier


@pytest.fixture(autouse=True)
def no_worker_left() -> object:
    yield
    gc.collect()
    assert verify_threads() == []


@pytest.mark.parametrize("depth", [1, MAX_READ_AHEAD])
@pytest.mark.parametrize(("chunk_size", "extra"), [(KiB, 0), (4 * KiB, 1), (64 * KiB, 777)])
def test_reads_back_exactly_and_the_worker_ends(depth: int, chunk_size: int, extra: int) -> None:
    data = os.urandom(chunk_size * 7 + extra)
    reader, verifier = reader_for(data, chunk_size, depth)
    received = bytearray()
    read_all(reader, received)
    assert bytes(received) == data
    assert reader.complete
    assert reader.bytes_verified == len(data)
    assert verifier.accepted == list(range(-(-len(data) // chunk_size)))
    assert threading.get_ident() not in verifier.threads  # the hashing ran on the worker
    assert verify_threads() == []  # it ended with the last chunk, before close


def test_no_byte_leaves_before_its_chunk_is_checked() -> None:
    chunk_size = 4 * KiB
    data = os.urandom(chunk_size * 12 + 5)
    verifier = RecordingVerifier(data, chunk_size, slow=0.002)
    reader = VerifiedReader(ReadOnlySource(data, short=True), verifier)
    reader.read_ahead(MAX_READ_AHEAD)
    offset = 0
    while piece := reader.read(1000):
        last_chunk = (offset + len(piece) - 1) // chunk_size
        assert last_chunk in verifier.accepted, f"bytes of chunk {last_chunk} before its check"
        offset += len(piece)
    assert offset == len(data)


@pytest.mark.parametrize("bad_chunk", [0, 1, 5, 6])
def test_a_bad_chunk_stops_at_its_place(bad_chunk: int) -> None:
    chunk_size = 4 * KiB
    data = os.urandom(chunk_size * 6 + 100)  # chunk 6 is the short last one
    tampered = bytearray(data)
    tampered[bad_chunk * chunk_size + 3] ^= 1
    verifier = RecordingVerifier(data, chunk_size)
    reader = VerifiedReader(io.BytesIO(bytes(tampered)), verifier)
    reader.read_ahead(1)
    received = bytearray()
    with pytest.raises(VerificationError, match=rf"chunk {bad_chunk} .* does not match"):
        read_all(reader, received, step=1000)
    assert bytes(received) == data[: bad_chunk * chunk_size]
    assert verify_threads() == []  # stopped on the error, not only at close
    with pytest.raises(VerificationError, match="does not match"):
        reader.read(1)
    assert bytes(received) == data[: bad_chunk * chunk_size]


def test_source_errors_come_after_every_good_chunk() -> None:
    data = os.urandom(6 * KiB)
    reader = VerifiedReader(
        FailingSource(data, good=3 * KiB + 10),
        ChunkVerifier(chunk_digests(data, KiB), KiB, len(data)),
    )
    reader.read_ahead(MAX_READ_AHEAD)
    received = bytearray()
    with pytest.raises(AcquireError, match="could not be read"):
        read_all(reader, received, step=100)
    assert bytes(received) == data[: 3 * KiB]
    assert verify_threads() == []


@pytest.mark.parametrize("cut", [KiB, 3 * KiB - 1, 5 * KiB + 1])
def test_truncated_source_in_order(cut: int) -> None:
    data = os.urandom(6 * KiB)
    reader, _ = reader_for(data, KiB, source=io.BytesIO(data[:cut]))
    received = bytearray()
    with pytest.raises(VerificationError, match=rf"ended after {cut} of its signed"):
        read_all(reader, received)
    assert bytes(received) == data[: cut // KiB * KiB]


def test_extra_bytes_are_refused_before_the_last_chunk() -> None:
    data = os.urandom(5 * KiB + 10)
    reader, _ = reader_for(data, KiB, source=io.BytesIO(data + b"\0"))
    received = bytearray()
    with pytest.raises(VerificationError, match="longer than its signed"):
        read_all(reader, received)
    assert bytes(received) == data[: 5 * KiB]
    assert not reader.complete


def test_expect_eof_off_leaves_the_rest_of_the_source() -> None:
    data = os.urandom(5 * KiB + 10)
    source = io.BytesIO(data + b"TRAILER")
    reader, _ = reader_for(data, KiB, source=source, expect_eof=False)
    assert reader.read() == data
    assert source.read() == b"TRAILER"


def test_progress_in_order_from_the_consumer_thread() -> None:
    data = os.urandom(4 * KiB + 100)
    seen: list[tuple[int, int]] = []
    reader, _ = reader_for(
        data, KiB, progress=lambda done: seen.append((done, threading.get_ident()))
    )
    drain(reader)
    assert [done for done, _ in seen] == [KiB, 2 * KiB, 3 * KiB, 4 * KiB, 4 * KiB + 100]
    assert {thread for _, thread in seen} == {threading.get_ident()}


def test_progress_failure_stops_the_stream_and_the_worker() -> None:
    data = os.urandom(6 * KiB)

    def cancel(done: int) -> None:
        if done == 2 * KiB:
            raise KeyboardInterrupt

    reader, _ = reader_for(data, KiB, progress=cancel)
    received = bytearray()
    with pytest.raises(KeyboardInterrupt):
        read_all(reader, received)
    assert bytes(received) == data[:KiB]
    assert verify_threads() == []
    with pytest.raises(AcquireError, match="interrupted"):
        reader.read(1)


def test_early_close_stops_the_worker_and_reads_no_more() -> None:
    data = os.urandom(64 * KiB)
    source = ReadOnlySource(data)
    reader, _ = reader_for(data, KiB, MAX_READ_AHEAD, source=source)
    assert reader.read(10) == data[:10]
    assert len(verify_threads()) == 1
    reads = source.reads
    reader.close()
    assert verify_threads() == []
    assert source.reads == reads
    with pytest.raises(ValueError, match="closed"):
        reader.read(1)


def test_a_dropped_reader_stops_its_worker() -> None:
    data = os.urandom(64 * KiB)
    reader, _ = reader_for(data, KiB)
    assert reader.read(10) == data[:10]
    assert len(verify_threads()) == 1
    del reader
    gc.collect()
    assert verify_threads() == []


def test_memory_is_a_fixed_number_of_chunks() -> None:
    chunk_size = MiB
    data = os.urandom(24 * MiB)
    verifier = ChunkVerifier(chunk_digests(data, chunk_size), chunk_size, len(data))
    buffer = bytearray(64 * KiB)
    tracemalloc.start()
    try:
        reader = VerifiedReader(io.BytesIO(data), verifier)
        reader.read_ahead(MAX_READ_AHEAD)
        while reader.readinto(buffer):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reader.complete
    assert peak < (1 + MAX_READ_AHEAD) * chunk_size + 256 * KiB


def test_read_ahead_is_set_before_reading_and_bounded() -> None:
    data = os.urandom(4 * KiB)
    reader = VerifiedReader(io.BytesIO(data), ChunkVerifier(chunk_digests(data, KiB), KiB, 4 * KiB))
    with pytest.raises(ValueError, match="0 to"):
        reader.read_ahead(MAX_READ_AHEAD + 1)
    reader.read(1)
    with pytest.raises(ValueError, match="before the first read"):
        reader.read_ahead(1)


def test_single_chunk_and_empty_payloads_need_no_worker() -> None:
    for data in (b"", os.urandom(100)):
        reader, _ = reader_for(data, KiB)
        assert reader.read() == data
        assert reader.complete
