"""The reading side of tree extraction: tar members from a one-way stream of verified bytes.

Responsibility: turn a sequential stream (an already-verified payload, optionally zstd) into tar
member headers, and hand each regular member's data straight into the caller's buffer. Nothing
is written here; ``sysupd.slots.extract`` decides what may be written, and writes it.

Why not tarfile's stream mode: it reads the payload in 10 KiB records and copies file data through
its own buffers (100,000+ reads for a GiB). Here each 512-byte header is parsed by
``TarInfo.frombuf`` (the checksum, the number fields, ustar prefixes, old-style directories), and
file data moves with one ``readinto`` per piece, straight into the writer's buffer. Extended
headers are parsed here, not by tarfile, so none of tarfile's pax or sparse code (the parts the
2025 CVEs were about) ever runs.

Invariants:

- Memory is bounded whatever the archive: one 512-byte header, one extended header of at most
  ``MAX_EXTENDED_HEADER_BYTES``, the few pax keys we use (path, size, mtime) kept from global
  headers, a 64 KiB skip buffer. At most ``_MAX_EXTENDED_HEADERS`` extended headers may precede
  one member, so a chain of them cannot run on.
- A header's declared size is checked before anything acts on it: negative sizes and oversized
  extended headers are refused; sparse members (GNU type ``S``, or any ``GNU.sparse.*`` pax key)
  are refused before their map is read.
- Every byte is read in order; nothing is skipped without being read (a one-way stream has no
  seek). A member's data must be read to its end (or skipped) before the next header.
- The archive must end with an end-of-archive (zero) block followed only by at most
  ``_MAX_TRAILER_BYTES`` of zeros; a stream that ends anywhere else is truncated or corrupt.
- Errors: ``VerificationError`` for anything wrong with the bytes (always "the archive is
  truncated or corrupt: ..." for broken structure, "archive member ... is refused: ..." for a
  refused member); errors of the source itself (``OSError``, ``SysupdError``) pass through.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from tarfile import (
    GNUTYPE_LONGLINK,
    GNUTYPE_LONGNAME,
    GNUTYPE_SPARSE,
    SOLARIS_XHDTYPE,
    XGLTYPE,
    XHDTYPE,
    HeaderError,
    TarInfo,
)
from typing import BinaryIO, Literal, Self

import zstandard

from sysupd.errors import VerificationError

__all__ = ["MAX_EXTENDED_HEADER_BYTES", "TarStream", "corrupt", "refused"]

BLOCK = tarfile.BLOCKSIZE  # 512
MAX_EXTENDED_HEADER_BYTES = 8 << 10  # pax or GNU long-name data before a member
_MAX_EXTENDED_HEADERS = 16  # in a row before one member
_MAX_TRAILER_BYTES = 1 << 20  # zero padding allowed after the end-of-archive block
_SKIP_BYTES = 64 << 10
_ZSTD_MAX_WINDOW_BYTES = 1 << 27  # zstd's own default limit, stated so it cannot drift
_ZSTD_READ_BYTES = 1 << 20  # compressed bytes asked of the source per read
_ENCODING, _ERRORS = "utf-8", "surrogateescape"  # as tarfile's defaults on our devices
_PAX_KEYS = frozenset({"path", "size", "mtime"})  # the rest (owners, links, times) is not used
_EXTENDED_TYPES = frozenset({XHDTYPE, XGLTYPE, SOLARIS_XHDTYPE, GNUTYPE_LONGNAME, GNUTYPE_LONGLINK})
_PAX_TYPES = frozenset({XHDTYPE, XGLTYPE, SOLARIS_XHDTYPE})


def refused(member: str, reason: str) -> VerificationError:
    """The error for a member the allow-list refuses."""
    return VerificationError(f"archive member {member!r} is refused: {reason}")


def corrupt(reason: str) -> VerificationError:
    """The error for bytes that are not a well-formed archive."""
    return VerificationError(f"the archive is truncated or corrupt: {reason}")


class _Header(TarInfo):
    """A TarInfo parsed from one block, with its declared size checked before anything uses it."""

    __slots__ = ()

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.size < 0:
            raise refused(info.name, "its header declares a negative size")
        if info.type in _EXTENDED_TYPES and info.size > MAX_EXTENDED_HEADER_BYTES:
            raise VerificationError(
                f"the archive has an extended header of {info.size} bytes"
                f" (at most {MAX_EXTENDED_HEADER_BYTES} allowed)"
            )
        return info


class TarStream:
    """The members of a tar stream, read once, in order.

    Use as a context manager (it owns the zstd decompressor, never ``source``)::

        with TarStream(source, "zstd") as tar:
            for info in tar.members():
                ...  # for a regular member, tar.readinto(buffer) until it returns 0
    """

    def __init__(self, source: BinaryIO, compression: Literal["none", "zstd"]) -> None:
        self._stack = ExitStack()
        stream: BinaryIO = source
        if compression == "zstd":
            decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW_BYTES)
            reader = decompressor.stream_reader(
                source, read_size=_ZSTD_READ_BYTES, read_across_frames=True, closefd=False
            )
            stream = self._stack.enter_context(reader)
        readinto = getattr(stream, "readinto", None)
        self._readinto: Callable[[memoryview], int | None] = (
            readinto if callable(readinto) else _readinto_by_read(stream)
        )
        self._header = memoryview(bytearray(BLOCK))
        self._skip = memoryview(bytearray(_SKIP_BYTES))
        self._left = 0  # data bytes of the current member not read yet
        self._padding = 0  # zero bytes after them, up to the next block
        self._member = ""
        self._global: dict[str, str] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # Members.

    def members(self) -> Iterator[TarInfo]:
        """Every member in order; at the end, check the archive was complete and drain the rest.

        The caller reads a member's data with ``readinto`` before asking for the next one; what
        it leaves is read and dropped here.

        Raises:
            VerificationError: the archive is truncated or corrupt, or a header is refused.
        """
        while True:
            self._drop(self._left + self._padding)
            self._left = self._padding = 0
            info = self._next_header()
            if info is None:
                break
            self._member = info.name
            self._left = info.size if _has_data(info) else 0
            self._padding = -self._left % BLOCK
            yield info
        self._check_trailer()

    def readinto(self, buffer: memoryview) -> int:
        """Up to ``len(buffer)`` bytes of the current member's data; 0 at its end.

        Raises:
            VerificationError: the archive ends inside the member.
        """
        want = min(len(buffer), self._left)
        if not want:
            return 0
        count = self._read(buffer[:want])
        if not count:
            raise corrupt(f"it ends inside member {self._member!r}")
        self._left -= count
        return count

    # Headers.

    def _next_header(self) -> TarInfo | None:
        """The next member with its extended headers applied; None at the end-of-archive block."""
        local: dict[str, str] = {}
        long_name: str | None = None
        for _ in range(_MAX_EXTENDED_HEADERS + 1):
            info = self._read_header()
            if info is None:
                return None
            if info.type not in _EXTENDED_TYPES:
                return self._apply(info, long_name, {**self._global, **local})
            data = self._read_extended(info.size)
            if info.type == GNUTYPE_LONGNAME:
                long_name = _nts(data)
            elif info.type in _PAX_TYPES:
                records = _parse_pax(data)
                (self._global if info.type == XGLTYPE else local).update(records)
            # GNUTYPE_LONGLINK: a link target, of no use since links are refused.
        raise VerificationError("the archive's headers are nested too deeply")

    def _read_header(self) -> TarInfo | None:
        """One header block parsed; None for a zero block (the end of the archive)."""
        got = self._read_fully(self._header)
        if got == 0:
            raise corrupt("it has no end-of-archive block")
        if got < BLOCK:
            raise corrupt("it ends inside a header")
        block = self._header.tobytes()
        if block.count(0) == BLOCK:
            return None
        try:
            return _Header.frombuf(block, _ENCODING, _ERRORS)
        except (HeaderError, ValueError, OverflowError) as exc:
            raise corrupt(f"bad header ({exc})") from exc

    def _read_extended(self, size: int) -> bytes:
        """The data of an extended header (its size is already capped), without its padding."""
        data = bytearray(size + -size % BLOCK)
        if self._read_fully(memoryview(data)) != len(data):
            raise corrupt("it ends inside an extended header")
        return bytes(data[:size])

    @staticmethod
    def _apply(info: TarInfo, long_name: str | None, pax: dict[str, str]) -> TarInfo:
        """Put the extended headers' values in the member; refuse sparse ones."""
        if long_name is not None:
            info.name = long_name
        if "path" in pax:
            info.name = pax["path"]
        if "sparse" in pax:
            raise refused(info.name, "it is a sparse file")
        if "size" in pax:
            text = pax["size"]
            if not text.isascii() or not text.isdigit():
                raise corrupt(f"member {info.name!r} has a bad pax size {text!r}")
            info.size = int(text)
        if "mtime" in pax:
            try:
                info.mtime = float(pax["mtime"])
            except ValueError as exc:
                raise corrupt(f"member {info.name!r} has a bad pax mtime") from exc
        if info.type == GNUTYPE_SPARSE:
            raise refused(info.name, "it is a sparse file")
        return info

    # The end.

    def _check_trailer(self) -> None:
        """After the end-of-archive block, only a little zero padding, then the stream's end."""
        trailer = 0
        while True:
            count = self._read(self._skip)
            if not count:
                return
            if self._skip[:count].tobytes().count(0) != count:
                raise VerificationError("the archive has data after its end-of-archive block")
            trailer += count
            if trailer > _MAX_TRAILER_BYTES:
                raise VerificationError(
                    f"the archive has more than {_MAX_TRAILER_BYTES} bytes after its end"
                )

    # Reading.

    def _read(self, into: memoryview) -> int:
        """One read into ``into``; 0 only at the end of the stream."""
        try:
            return self._readinto(into) or 0
        except zstandard.ZstdError as exc:
            raise corrupt(str(exc)) from exc

    def _read_fully(self, into: memoryview) -> int:
        """Fill ``into`` unless the stream ends first; the bytes read."""
        got = 0
        while got < len(into):
            count = self._read(into[got:])
            if not count:
                break
            got += count
        return got

    def _drop(self, size: int) -> None:
        """Read and discard ``size`` bytes (the rest of a member, its padding)."""
        while size:
            count = self._read(self._skip[: min(size, _SKIP_BYTES)])
            if not count:
                raise corrupt(f"it ends inside member {self._member!r}")
            size -= count


def _has_data(info: TarInfo) -> bool:
    """Whether data blocks follow this header (as tarfile decides: regular and unknown types)."""
    return info.isreg() or info.type not in tarfile.SUPPORTED_TYPES


def _readinto_by_read(stream: BinaryIO) -> Callable[[memoryview], int]:
    def readinto(into: memoryview) -> int:
        data = stream.read(len(into))
        into[: len(data)] = data
        return len(data)

    return readinto


def _nts(data: bytes) -> str:
    """A NUL-terminated string field, decoded as tarfile does."""
    end = data.find(0)
    return (data if end < 0 else data[:end]).decode(_ENCODING, _ERRORS)


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:  # hdrcharset=BINARY, or a writer that did not follow the spec
        return value.decode(_ENCODING, _ERRORS)


def _parse_pax(data: bytes) -> dict[str, str]:
    """The records of a pax header that we use (``sparse`` stands for any GNU.sparse key).

    Raises:
        VerificationError: a record is malformed.
    """
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data.count(0, pos) == len(data) - pos:
            break  # zero padding inside the declared size: tolerated, as by tar(1)
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit() or len(digits) > 6:
            raise corrupt("a pax header has a malformed record")
        end = pos + int(digits)
        if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
            raise corrupt("a pax header has a malformed record")
        keyword, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or not keyword:
            raise corrupt("a pax header has a malformed record")
        key = keyword.decode("utf-8", _ERRORS)
        if key.startswith("GNU.sparse."):
            records["sparse"] = "1"
        elif key in _PAX_KEYS:
            value_text = _decode(value)
            records[key] = value_text.rstrip("/") if key == "path" else value_text
        pos = end
    return records
