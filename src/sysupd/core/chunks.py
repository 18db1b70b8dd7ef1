"""Chunk-by-chunk payload verification, so no byte is used before it is checked.

A release signs its payload's length and SHA-256, and a chunk list: the SHA-256 of each
consecutive ``chunk_size``-byte chunk (the last may be shorter), whose own hash is signed too. The
verifier is fed the payload one chunk at a time and refuses the first chunk that does not match.
Once every chunk matched the signed list, the payload is the signed one (a second hash over the
whole would only cost another pass of SHA-256), so ``finish`` checks that none is missing.

Invariant: ``check`` returns only for a chunk whose digest matches the signed list, at its place.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sysupd.errors import VerificationError

__all__ = ["DIGEST_SIZE", "ChunkList", "ChunkVerifier", "chunk_digests"]

DIGEST_SIZE = 32


def chunk_digests(data: bytes, chunk_size: int) -> bytes:
    """The chunk list of ``data`` (for tools and tests)."""
    return b"".join(
        hashlib.sha256(data[i : i + chunk_size]).digest() for i in range(0, len(data), chunk_size)
    )


@dataclass(frozen=True, slots=True)
class ChunkList:
    """A payload's signed chunk list: the SHA-256 of each consecutive ``chunk_size`` bytes of its
    ``length`` (the last chunk may be shorter), so any chunk can be checked on its own.

    Raises:
        VerificationError: the list does not fit the length and chunk size.
    """

    digests: bytes
    chunk_size: int
    length: int

    def __post_init__(self) -> None:
        if self.chunk_size <= 0 or self.length < 0:
            raise VerificationError("the release's chunk size or length is invalid")
        if len(self.digests) != self.count * DIGEST_SIZE:
            raise VerificationError(
                f"the chunk list has {len(self.digests) // DIGEST_SIZE} entries, "
                f"the payload needs {self.count}"
            )

    @property
    def count(self) -> int:
        """How many chunks the payload has."""
        return -(-self.length // self.chunk_size)

    def span(self, number: int) -> tuple[int, int]:
        """Chunk ``number``'s offset and length."""
        offset = number * self.chunk_size
        return offset, min(self.chunk_size, self.length - offset)

    def digest(self, number: int) -> bytes:
        """Chunk ``number``'s signed SHA-256."""
        return self.digests[number * DIGEST_SIZE : (number + 1) * DIGEST_SIZE]


class ChunkVerifier:
    """Checks a payload chunk by chunk against its signed chunk list."""

    def __init__(self, chunk_list: bytes, chunk_size: int, length: int) -> None:
        """
        Raises:
            VerificationError: the chunk list does not fit the signed length and chunk size.
        """
        self._list = ChunkList(chunk_list, chunk_size, length)
        self.chunk_size = chunk_size
        self.length = length
        self._count = self._list.count
        self._index = 0

    @property
    def bytes_checked(self) -> int:
        """Payload bytes verified so far."""
        return min(self._index * self.chunk_size, self.length)

    @property
    def done(self) -> bool:
        """Whether every chunk has been checked."""
        return self._index == self._count

    def next_size(self) -> int:
        """The size the next chunk must have (0 when all are checked)."""
        if self.done:
            return 0
        return min(self.chunk_size, self.length - self._index * self.chunk_size)

    def check(self, chunk: bytes | memoryview) -> None:
        """Verify the next chunk.

        Raises:
            VerificationError: the chunk is too long or short, or its digest does not match.
        """
        expected_size = self.next_size()
        if self.done:
            raise VerificationError(f"the payload is longer than its signed {self.length} bytes")
        if len(chunk) != expected_size:
            raise VerificationError(
                f"chunk {self._index} has {len(chunk)} bytes, expected {expected_size}"
            )
        if not hmac.compare_digest(hashlib.sha256(chunk).digest(), self._list.digest(self._index)):
            raise VerificationError(
                f"chunk {self._index} (bytes {self._index * self.chunk_size}-"
                f"{self._index * self.chunk_size + len(chunk) - 1}) does not match its signed hash"
            )
        self._index += 1

    def finish(self) -> None:
        """Confirm that every chunk was checked.

        Raises:
            VerificationError: chunks are missing.
        """
        if not self.done:
            raise VerificationError(
                f"the payload ended after {self.bytes_checked} of its signed {self.length} bytes"
            )
