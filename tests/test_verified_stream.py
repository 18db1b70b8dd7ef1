"""The verified payload stream hands out exactly the signed payload, and nothing of a bad chunk.

Payloads, chunk lists and verifiers are made here with ``chunk_digests``; sources are in-memory
files or small fakes that read short, carry extra bytes or fail like a disk.
"""

from __future__ import annotations

import io
import os
import random

import pytest

from sysupd.core.chunks import ChunkVerifier, chunk_digests
from sysupd.engine.stream import MAX_CHUNK_BYTES, VerifiedReader, drain
from sysupd.errors import AcquireError, VerificationError

KiB = 1 << 10


def verifier_for(data: bytes, chunk_size: int) -> ChunkVerifier:
    return ChunkVerifier(chunk_digests(data, chunk_size), chunk_size, len(data))


class ReadOnlySource:
    """A source with nothing but ``read`` (like a network stream), optionally reading short."""

    def __init__(self, data: bytes, *, short: bool = False, seed: int = 1) -> None:
        self._data = memoryview(data)
        self._short = random.Random(seed) if short else None
        self.reads = 0

    def read(self, size: int, /) -> bytes:
        self.reads += 1
        if self._short is not None:
            size = min(size, self._short.randint(1, 7))
        out = bytes(self._data[:size])
        self._data = self._data[len(out) :]
        return out


class FailingSource:
    """A source whose disk fails after ``good`` bytes."""

    def __init__(self, data: bytes, good: int) -> None:
        self._data = data
        self._good = good
        self._offset = 0

    def read(self, size: int, /) -> bytes:
        if self._offset >= self._good:
            raise OSError(5, "Input/output error")
        size = min(size, self._good - self._offset)
        out = self._data[self._offset : self._offset + size]
        self._offset += len(out)
        return out


def read_all(reader: VerifiedReader, received: bytearray, step: int = 3001) -> None:
    """Read the way parsers do, in odd-sized pieces, keeping every byte handed out."""
    while True:
        piece = reader.read(step)
        if not piece:
            return
        received += piece


@pytest.mark.parametrize("chunk_size", [1 * KiB, 4 * KiB, 64 * KiB])
@pytest.mark.parametrize("extra", [0, 1, 777])
def test_good_payload_reads_back_exactly(chunk_size: int, extra: int) -> None:
    data = os.urandom(chunk_size * 5 + extra)
    reader = VerifiedReader(io.BytesIO(data), verifier_for(data, chunk_size))
    received = bytearray()
    read_all(reader, received)
    assert bytes(received) == data
    assert reader.complete
    assert reader.bytes_verified == len(data)
    assert reader.read(10) == b""


def test_readinto_and_readall_and_buffered_reader() -> None:
    data = os.urandom(10 * KiB + 5)
    reader = VerifiedReader(io.BytesIO(data), verifier_for(data, KiB))
    buffer = bytearray(700)
    assert reader.readinto(buffer) == 700
    assert bytes(buffer) == data[:700]
    assert reader.readall() == data[700:]

    buffered = io.BufferedReader(VerifiedReader(ReadOnlySource(data), verifier_for(data, KiB)))
    assert buffered.read() == data


def test_empty_payload() -> None:
    reader = VerifiedReader(io.BytesIO(b""), verifier_for(b"", KiB))
    assert reader.read(100) == b""
    assert reader.complete
    with pytest.raises(VerificationError, match="longer than its signed 0 bytes"):
        VerifiedReader(io.BytesIO(b"x"), verifier_for(b"", KiB)).read(1)


@pytest.mark.parametrize("bad_chunk", [0, 2, 4])
def test_flipped_byte_is_caught_before_any_byte_of_its_chunk(bad_chunk: int) -> None:
    chunk_size = 4 * KiB
    data = os.urandom(chunk_size * 4 + 100)  # chunk 4 is the short last one
    tampered = bytearray(data)
    tampered[bad_chunk * chunk_size + 17] ^= 0x40
    reader = VerifiedReader(io.BytesIO(bytes(tampered)), verifier_for(data, chunk_size))
    received = bytearray()
    with pytest.raises(VerificationError, match=rf"chunk {bad_chunk} .* does not match"):
        read_all(reader, received, step=1000)
    assert bytes(received) == data[: bad_chunk * chunk_size]
    # A consumer that swallowed the error gets no further.
    with pytest.raises(VerificationError, match="does not match"):
        reader.read(1)
    assert bytes(received) == data[: bad_chunk * chunk_size]


@pytest.mark.parametrize("cut", [0, 1, KiB, 3 * KiB - 1])
def test_truncated_source_is_refused(cut: int) -> None:
    data = os.urandom(3 * KiB)
    reader = VerifiedReader(io.BytesIO(data[:cut]), verifier_for(data, KiB))
    received = bytearray()
    with pytest.raises(
        VerificationError, match=rf"payload ended after {cut} of its signed {len(data)} bytes"
    ):
        read_all(reader, received)
    assert bytes(received) == data[: cut // KiB * KiB]


def test_source_with_extra_bytes_is_refused_before_the_last_chunk() -> None:
    data = os.urandom(3 * KiB + 10)
    reader = VerifiedReader(io.BytesIO(data + b"\0"), verifier_for(data, KiB))
    received = bytearray()
    with pytest.raises(VerificationError, match=rf"longer than its signed {len(data)} bytes"):
        read_all(reader, received)
    assert bytes(received) == data[: 3 * KiB]
    assert not reader.complete


def test_expect_eof_off_leaves_what_follows_in_the_source() -> None:
    data = os.urandom(3 * KiB + 10)
    source = io.BytesIO(data + b"TRAILER")
    reader = VerifiedReader(source, verifier_for(data, KiB), expect_eof=False)
    received = bytearray()
    read_all(reader, received)
    assert bytes(received) == data
    assert reader.complete
    assert source.read() == b"TRAILER"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_short_reading_source(seed: int) -> None:
    data = os.urandom(5 * KiB + 3)
    source = ReadOnlySource(data, short=True, seed=seed)
    reader = VerifiedReader(source, verifier_for(data, KiB))
    received = bytearray()
    read_all(reader, received, step=KiB + 1)
    assert bytes(received) == data
    assert source.reads > len(data) // 7


def test_short_reading_source_with_a_bad_chunk() -> None:
    data = os.urandom(5 * KiB)
    tampered = bytearray(data)
    tampered[3 * KiB] ^= 1
    reader = VerifiedReader(ReadOnlySource(bytes(tampered), short=True), verifier_for(data, KiB))
    received = bytearray()
    with pytest.raises(VerificationError, match="chunk 3"):
        read_all(reader, received, step=5)
    assert bytes(received) == data[: 3 * KiB]


def test_progress_reports_verified_bytes_per_chunk() -> None:
    data = os.urandom(4 * KiB + 100)
    seen: list[int] = []
    reader = VerifiedReader(io.BytesIO(data), verifier_for(data, KiB), progress=seen.append)
    drain(reader)
    assert seen == [KiB, 2 * KiB, 3 * KiB, 4 * KiB, 4 * KiB + 100]
    assert reader.complete


def test_progress_stops_at_a_bad_chunk() -> None:
    data = os.urandom(4 * KiB)
    tampered = bytearray(data)
    tampered[2 * KiB + 1] ^= 1
    seen: list[int] = []
    reader = VerifiedReader(io.BytesIO(tampered), verifier_for(data, KiB), progress=seen.append)
    with pytest.raises(VerificationError):
        drain(reader)
    assert seen == [KiB, 2 * KiB]


def test_oserror_from_the_source_is_an_acquire_error() -> None:
    data = os.urandom(3 * KiB)
    reader = VerifiedReader(FailingSource(data, good=KiB + 10), verifier_for(data, KiB))
    received = bytearray()
    with pytest.raises(AcquireError, match="could not be read") as caught:
        read_all(reader, received)
    assert isinstance(caught.value.__cause__, OSError)
    assert bytes(received) == data[:KiB]
    with pytest.raises(AcquireError):
        reader.read(1)


def test_oserror_at_the_end_probe_is_an_acquire_error() -> None:
    data = os.urandom(2 * KiB)
    reader = VerifiedReader(FailingSource(data, good=len(data)), verifier_for(data, KiB))
    with pytest.raises(AcquireError):
        drain(reader)


def test_drain_works_on_any_binary_stream() -> None:
    data = os.urandom(3 * KiB)
    reader = VerifiedReader(ReadOnlySource(data), verifier_for(data, KiB))
    drain(io.BufferedReader(reader))
    assert reader.complete


def test_stream_properties_and_close() -> None:
    data = os.urandom(KiB)
    source = io.BytesIO(data)
    reader = VerifiedReader(source, verifier_for(data, KiB))
    assert reader.readable()
    assert not reader.seekable()
    assert not reader.writable()
    with reader:
        assert reader.read(0) == b""
    assert reader.closed
    assert not source.closed
    with pytest.raises(ValueError, match="closed"):
        reader.read(1)


def test_oversized_chunk_size_is_refused() -> None:
    size = MAX_CHUNK_BYTES + 1
    verifier = ChunkVerifier(b"\0" * 32, size, size)
    with pytest.raises(VerificationError, match=r"chunk size of \d+ bytes is over"):
        VerifiedReader(io.BytesIO(b""), verifier)


def test_progress_callback_failure_stops_the_stream() -> None:
    data = os.urandom(3 * KiB)

    def cancel(done: int) -> None:
        if done == 2 * KiB:
            raise KeyboardInterrupt

    reader = VerifiedReader(io.BytesIO(data), verifier_for(data, KiB), progress=cancel)
    received = bytearray()
    with pytest.raises(KeyboardInterrupt):
        read_all(reader, received)
    assert bytes(received) == data[:KiB]
    with pytest.raises(AcquireError, match="interrupted"):
        reader.read(1)
