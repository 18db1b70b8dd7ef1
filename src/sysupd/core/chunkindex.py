"""A release's chunk index: the content-defined chunks its payload is made of, for delta updates.

The release tool cuts the payload's *plain form* (a raw image as it is; a tree's tar without its
zstd compression, the stream the extractor reads) into content-defined chunks and stores each
one once, compressed on its own, under its SHA-256 in the repository's chunk store. The index
lists them in order. It is a target of the ``releases`` role, so python-tuf checks it against its
signed length and hash before anything here reads it; parsing is still strict, because a release
tool with a bug must not make a device write the wrong bytes.

Format (``docs/design/release-format.md``, "The chunk index"):

    offset 0   8 bytes   magic b"SYSUPDI\\x01"
    offset 8   4 bytes   header length H, unsigned big-endian (at most 64 KiB)
    offset 12  H bytes   header: a UTF-8 JSON object (``IndexHeader``)
    then       56 bytes per chunk: SHA-256 of the chunk (32), the first 16 bytes of the SHA-256
               of its stored (compressed) file, the chunk's length and the stored file's length
               (unsigned big-endian, 4 bytes each)

Invariants of a parsed ``ChunkIndex``: the chunks' lengths add up to the stated plain length,
each is between 1 byte and the chunker's maximum, each stored file is at most
``stored_bound(length)`` bytes, and the parameters are within what a device chunks with
(``MAX_CHUNK_BYTES``). A chunk is identified by its plain SHA-256 (the store's address, and what a
seed on the device is matched by); its stored SHA-256 is checked before the stored bytes are
decompressed, so nothing unauthenticated reaches zstd. It is cut to 128 bits because all it must
resist is a second preimage of a signed value (a server that makes another frame with the same
truncated hash: 2**128 work), and at 32 KiB chunks every byte of an entry costs 32 KiB a GiB of
index that every delta update downloads.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from array import array
from dataclasses import dataclass
from typing import Any, Final

from sysupd.errors import VerificationError

__all__ = [
    "ENTRY_BYTES",
    "INDEX_MAGIC",
    "MAX_CHUNK_BYTES",
    "MAX_INDEX_BYTES",
    "STORED_DIGEST_BYTES",
    "ChunkEntry",
    "ChunkIndex",
    "ChunkerParams",
    "encode_index",
    "parse_index",
    "store_path",
    "stored_bound",
    "stored_digest",
]

INDEX_MAGIC: Final = b"SYSUPDI\x01"
ENTRY_BYTES: Final = 56
STORED_DIGEST_BYTES: Final = 16
MAX_CHUNK_BYTES: Final = 4 << 20
"""The largest chunk a device takes (and buffers, a few at a time)."""
MAX_INDEX_BYTES: Final = 256 << 20
"""An index this large lists over 4.7 million chunks: about 150 GiB at 32 KiB."""
_MAX_HEADER_BYTES: Final = 64 * 1024
_ENTRY = struct.Struct(">32s16sII")
_HEX64 = re.compile(r"[0-9a-f]{64}")
CHUNKER: Final = "fastcdc-2016"
COMPRESSION: Final = "zstd"


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """FastCDC's sizes: chunks end at a content-defined point, never before ``min_bytes`` nor
    after ``max_bytes``, ``avg_bytes`` apart on average."""

    min_bytes: int
    avg_bytes: int
    max_bytes: int

    def __post_init__(self) -> None:
        """
        Raises:
            VerificationError: the sizes are out of the range a device chunks with.
        """
        if not 64 <= self.min_bytes <= self.avg_bytes <= self.max_bytes <= MAX_CHUNK_BYTES:
            raise VerificationError(
                f"the chunk index's chunker sizes {self.min_bytes}/{self.avg_bytes}/"
                f"{self.max_bytes} are not 64 <= min <= avg <= max <= {MAX_CHUNK_BYTES}"
            )
        if self.avg_bytes < 256 or self.max_bytes < 1024:
            raise VerificationError("the chunk index's average or maximum chunk is too small")


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    """One chunk: where it lies in the plain payload, its hash, and its stored file."""

    number: int
    offset: int
    length: int
    digest: bytes
    """SHA-256 of the chunk's bytes: its address in the store."""
    stored_digest: bytes
    """The first 16 bytes of the stored (compressed) file's SHA-256 (``stored_digest``), checked
    before it is decompressed."""
    stored_length: int

    @property
    def address(self) -> str:
        """The chunk's hex SHA-256, its name in the store."""
        return self.digest.hex()


def stored_digest(frame: bytes) -> bytes:
    """What the index says of a stored file: its SHA-256, cut to ``STORED_DIGEST_BYTES``."""
    return hashlib.sha256(frame).digest()[:STORED_DIGEST_BYTES]


def stored_bound(length: int) -> int:
    """The most bytes a stored chunk of ``length`` plain bytes may have (zstd's worst case for
    incompressible data is a little over the input; this leaves room for any frame header)."""
    return length + (length >> 7) + 512


def store_path(digest: bytes) -> str:
    """Where a chunk lives under the repository's ``targets/``: ``chunks/ab/abcd….zst``."""
    address = digest.hex()
    return f"chunks/{address[:2]}/{address}.zst"


@dataclass(frozen=True, slots=True)
class IndexHeader:
    """The index's JSON header."""

    length: int
    """The plain payload's length: the image, or a tree's uncompressed tar."""
    sha256: str
    """The plain payload's SHA-256, hex."""
    params: ChunkerParams
    count: int


class ChunkIndex:
    """A parsed chunk index; entries are decoded on demand from the verified bytes."""

    def __init__(self, header: IndexHeader, entries: bytes | memoryview) -> None:
        self.header = header
        self._entries = entries
        self._offsets = array("Q", [0]) * (header.count + 1)
        offset = 0
        params = header.params
        for number in range(header.count):
            _, _, length, stored = _ENTRY.unpack_from(entries, number * ENTRY_BYTES)
            if not 1 <= length <= params.max_bytes:
                raise VerificationError(
                    f"chunk {number} of the chunk index has {length} bytes, not 1 to "
                    f"{params.max_bytes}"
                )
            if not 1 <= stored <= stored_bound(length):
                raise VerificationError(
                    f"chunk {number} of the chunk index is stored in {stored} bytes, more than "
                    f"its {length} bytes can need"
                )
            offset += length
            self._offsets[number + 1] = offset
        if offset != header.length:
            raise VerificationError(
                f"the chunk index's chunks add up to {offset} bytes, not its stated {header.length}"
            )

    @property
    def count(self) -> int:
        """How many chunks the payload has."""
        return self.header.count

    @property
    def length(self) -> int:
        """The plain payload's length."""
        return self.header.length

    @property
    def params(self) -> ChunkerParams:
        """The chunker sizes the release was cut with (a seed is cut the same way)."""
        return self.header.params

    def entry(self, number: int) -> ChunkEntry:
        """Chunk ``number`` (0 is the first).

        Raises:
            IndexError: there is no such chunk.
        """
        if not 0 <= number < self.header.count:
            raise IndexError(f"no chunk {number}")
        digest, stored_digest, length, stored = _ENTRY.unpack_from(
            self._entries, number * ENTRY_BYTES
        )
        return ChunkEntry(number, self._offsets[number], length, digest, stored_digest, stored)

    def span(self, number: int) -> tuple[int, int]:
        """Chunk ``number``'s offset and length in the payload (cheaper than ``entry``)."""
        offsets = self._offsets
        return offsets[number], offsets[number + 1] - offsets[number]

    def digest(self, number: int) -> bytes:
        """Chunk ``number``'s plain SHA-256 (cheaper than ``entry``)."""
        start = number * ENTRY_BYTES
        return bytes(self._entries[start : start + 32])

    def stored_bytes(self, numbers: list[int] | None = None) -> int:
        """The stored size of the chunks ``numbers`` (all if ``None``): what fetching them costs."""
        chosen = range(self.header.count) if numbers is None else numbers
        return sum(_ENTRY.unpack_from(self._entries, number * ENTRY_BYTES)[3] for number in chosen)

    def numbers_by_digest(self) -> dict[bytes, list[int]]:
        """Every chunk number under its digest (a payload may hold one chunk many times)."""
        found: dict[bytes, list[int]] = {}
        for number in range(self.header.count):
            found.setdefault(self.digest(number), []).append(number)
        return found


def parse_index(data: bytes) -> ChunkIndex:
    """The index ``data`` holds (bytes already checked against their signed hash).

    Raises:
        VerificationError: ``data`` is not a well-formed chunk index.
    """
    if len(data) > MAX_INDEX_BYTES:
        raise VerificationError(f"the chunk index is over {MAX_INDEX_BYTES} bytes")
    if len(data) < 12 or not data.startswith(INDEX_MAGIC):
        raise VerificationError("the chunk index does not start with its magic bytes")
    (size,) = struct.unpack_from(">I", data, 8)
    if size > _MAX_HEADER_BYTES or 12 + size > len(data):
        raise VerificationError("the chunk index's header length is out of range")
    try:
        fields = json.loads(data[12 : 12 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerificationError(f"the chunk index's header is not JSON: {exc}") from exc
    header = _header(fields)
    # A view, not a copy: the caller keeps ``data`` (to keep it for the next update) anyway.
    entries = memoryview(bytes(data))[12 + size :]
    if len(entries) != header.count * ENTRY_BYTES:
        raise VerificationError(
            f"the chunk index states {header.count} chunks but holds {len(entries) / ENTRY_BYTES:g}"
        )
    return ChunkIndex(header, entries)


def encode_index(
    length: int, sha256: str, params: ChunkerParams, entries: list[tuple[bytes, bytes, int, int]]
) -> bytes:
    """The index of a payload of ``length`` bytes with ``sha256``, cut with ``params`` into
    ``entries`` (digest, stored digest, length, stored length), in order."""
    header = json.dumps(
        {
            "format": 1,
            "length": length,
            "sha256": sha256,
            "chunker": CHUNKER,
            "min": params.min_bytes,
            "avg": params.avg_bytes,
            "max": params.max_bytes,
            "compression": COMPRESSION,
            "count": len(entries),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    body = b"".join(_ENTRY.pack(*entry) for entry in entries)
    return INDEX_MAGIC + struct.pack(">I", len(header)) + header + body


_HEADER_TYPES: Final = {
    "format": int,
    "length": int,
    "sha256": str,
    "chunker": str,
    "min": int,
    "avg": int,
    "max": int,
    "compression": str,
    "count": int,
}


def _header(fields: Any) -> IndexHeader:
    if not isinstance(fields, dict):
        raise VerificationError("the chunk index's header is not a JSON object")
    if set(fields) != set(_HEADER_TYPES):
        odd = sorted(set(fields) ^ set(_HEADER_TYPES))
        raise VerificationError(f"the chunk index's header has or lacks the field {odd[0]!r}")
    for name, kind in _HEADER_TYPES.items():
        value = fields[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise VerificationError(f"the chunk index's header field {name!r} has a wrong type")
    if fields["format"] != 1:
        raise VerificationError(
            f"the chunk index has format {fields['format']}; this device reads format 1"
        )
    if fields["chunker"] != CHUNKER or fields["compression"] != COMPRESSION:
        raise VerificationError(
            f"the chunk index uses {fields['chunker']}/{fields['compression']}; this device "
            f"knows {CHUNKER}/{COMPRESSION}"
        )
    if not _HEX64.fullmatch(fields["sha256"]):
        raise VerificationError("the chunk index's SHA-256 is not 64 lower-case hex digits")
    if fields["length"] < 0 or fields["count"] < 0:
        raise VerificationError("the chunk index states a negative length or count")
    params = ChunkerParams(fields["min"], fields["avg"], fields["max"])
    return IndexHeader(fields["length"], fields["sha256"], params, fields["count"])
