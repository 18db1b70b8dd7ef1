"""The chunk verifier accepts exactly the signed payload and names the first bad chunk."""

from __future__ import annotations

import os

import pytest

from sysupd.core.chunks import ChunkVerifier, chunk_digests
from sysupd.errors import VerificationError

SIZE = 1000


def _verifier(data: bytes, chunk_size: int = SIZE) -> ChunkVerifier:
    return ChunkVerifier(chunk_digests(data, chunk_size), chunk_size, len(data))


def _feed(verifier: ChunkVerifier, data: bytes) -> None:
    for i in range(0, len(data), verifier.chunk_size):
        verifier.check(data[i : i + verifier.chunk_size])


def test_good_payload_passes() -> None:
    data = os.urandom(SIZE * 3 + 17)
    verifier = _verifier(data)
    _feed(verifier, data)
    verifier.finish()
    assert verifier.bytes_checked == len(data)
    assert verifier.next_size() == 0


def test_empty_payload() -> None:
    verifier = _verifier(b"")
    assert verifier.done
    verifier.finish()


def test_one_flipped_byte_is_caught_in_its_chunk() -> None:
    data = bytearray(os.urandom(SIZE * 4))
    verifier = _verifier(bytes(data))
    data[2 * SIZE + 5] ^= 0x01
    verifier.check(bytes(data[:SIZE]))
    verifier.check(bytes(data[SIZE : 2 * SIZE]))
    with pytest.raises(VerificationError, match=r"chunk 2 .* does not match"):
        verifier.check(bytes(data[2 * SIZE : 3 * SIZE]))


def test_longer_payload_is_refused() -> None:
    data = os.urandom(SIZE * 2)
    verifier = _verifier(data)
    _feed(verifier, data)
    with pytest.raises(VerificationError, match="longer than its signed"):
        verifier.check(b"x")


def test_truncated_payload_is_refused() -> None:
    data = os.urandom(SIZE * 2 + 10)
    verifier = _verifier(data)
    verifier.check(data[:SIZE])
    with pytest.raises(VerificationError, match="ended after 1000 of its signed 2010 bytes"):
        verifier.finish()
    with pytest.raises(VerificationError, match="has 5 bytes, expected 1000"):
        verifier.check(data[SIZE : SIZE + 5])


def test_chunk_list_that_does_not_fit_is_refused() -> None:
    data = os.urandom(SIZE * 2)
    with pytest.raises(VerificationError, match="chunk list has 2 entries, the payload needs 3"):
        ChunkVerifier(chunk_digests(data, SIZE), SIZE, SIZE * 3)
    with pytest.raises(VerificationError, match="chunk size"):
        ChunkVerifier(b"", 0, 0)
