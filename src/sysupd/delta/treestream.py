"""The tar a directory tree would be released as, re-created on the device with random access.

A tree release is a deterministic tar (``release.payloads.pack_tree``: sorted members, owner 0,
mtime 0, permission bits). So a tree the device holds — the booted slot's files — stands for the
plain payload it was installed from, and for the unchanged parts of any later release: this
module lays it out as that tar without writing it anywhere. ``TreeTar`` walks the tree once
(names, modes and sizes only) and can then stream the tar, or read any span of it: headers are
re-made with the release tool's own ``member_info``, file bytes read with ``pread``.

Invariants: the layout is the one ``pack_tree`` writes for the same tree (a test holds them
byte-equal); only regular files and directories with UTF-8 names are members (anything else in
the tree is left out, as no release holds it); memory is some forty bytes a member and its name.
The bytes read are never trusted: whoever uses them checks their hash, so a file that changed
since the walk only makes its chunks miss.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import tarfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sysupd.release.payloads import member_info, walk_tree

__all__ = ["TreeTar", "read_full"]

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_READ_BYTES = 1 << 20
_NAME_BYTES = 100  # ustar's name field
_SIZE_LIMIT = 8**11  # ustar's size field: 11 octal digits
_TEMPLATES: dict[tuple[bool, bool], _Template] = {}  # (directory, executable): tarfile's
_ZEROS = memoryview(bytes(_READ_BYTES))
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class _Member:
    start: int
    """Where its header starts in the tar."""
    name: str
    mode: int
    size: int | None
    """``None`` for a directory."""
    data_start: int
    """Where its data starts (after its header)."""

    @property
    def end(self) -> int:
        """Where the next member starts."""
        return _data_end(self.data_start, self.size)


def _data_end(data_start: int, size: int | None) -> int:
    """Where a member's data ends, padded to whole blocks: where the next member starts."""
    return data_start + -(-(size or 0) // _BLOCK) * _BLOCK


class _Members:
    """The members' records in columns (a tree of 35,000 files: about 3 MiB, not 11 as
    objects); ``_Member`` records are made on demand."""

    def __init__(self) -> None:
        self.starts = array("q")
        self._data_starts = array("q")
        self._sizes = array("q")  # -1: a directory
        self._modes = array("L")
        self._name_ends = array("q")
        self._names = bytearray()

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, start: int, name: str, mode: int, size: int | None, data_start: int) -> None:
        self.starts.append(start)
        self._data_starts.append(data_start)
        self._sizes.append(-1 if size is None else size)
        self._modes.append(mode)
        self._names += name.encode("utf-8", "surrogateescape")
        self._name_ends.append(len(self._names))

    def __getitem__(self, position: int) -> _Member:
        begin = self._name_ends[position - 1] if position else 0
        name = self._names[begin : self._name_ends[position]].decode("utf-8", "surrogateescape")
        size = self._sizes[position]
        return _Member(
            self.starts[position],
            name,
            self._modes[position],
            None if size < 0 else size,
            self._data_starts[position],
        )


class TreeTar:
    """The release tar of the tree under ``root``, laid out without being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = os.fspath(root)
        self._members = _Members()
        offset = 0
        for name, mode, size in _walk(root):
            data_start = offset + _header_bytes(name, mode, size)
            self._members.add(offset, name, mode, size, data_start)
            offset = _data_end(data_start, size)
        self._body = offset
        ended = offset + 2 * _BLOCK
        self.length = ended + (-ended % _RECORD)
        """The tar's length: members, two zero blocks, zeros to a whole record."""
        self._open: tuple[str, int] | None = None
        self._last_header: tuple[int, bytes] = (-1, b"")

    @property
    def members(self) -> int:
        """How many files and directories the tar holds."""
        return len(self._members)

    def stream(self) -> Iterator[bytes]:
        """The whole tar, in pieces of at most a MiB (a file that shrank since the walk is
        padded with zeros, so the layout holds; its chunks will not match)."""
        for position in range(len(self._members)):
            member = self._members[position]
            yield _header(member.name, member.mode, member.size)
            size = member.size or 0
            if size:
                yield from self._file_pieces(member, size)
                if size % _BLOCK:
                    yield bytes(_BLOCK - size % _BLOCK)
        tail = self.length - self._body
        while tail:
            piece = min(tail, _READ_BYTES)
            yield bytes(piece)
            tail -= piece

    def read_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the tar's bytes from ``offset`` (file bytes read straight into it).

        Raises:
            OSError: a file cannot be read, or the span is outside the tar.
        """
        end = offset + len(out)
        if offset < 0 or end > self.length:
            raise OSError(f"bytes {offset}+{len(out)} are outside the tree's tar of {self.length}")
        at = 0  # bytes of out filled
        position = bisect.bisect_right(self._members.starts, offset) - 1
        while offset < end:
            if position < 0 or position >= len(self._members):  # the zeros after the members
                _zero(out[at:])
                break
            member = self._members[position]
            if offset < member.data_start:
                header = self._header_of(position, member)
                take = header[offset - member.start : min(end, member.data_start) - member.start]
                out[at : at + len(take)] = take
                at += len(take)
                offset += len(take)
            member_end = member.end
            if member.data_start <= offset < min(end, member_end):
                within = offset - member.data_start
                stop = min(end, member_end) - member.data_start
                wanted = max(0, min(stop, member.size or 0) - within)
                got = self._pread_into(member, within, out[at : at + wanted]) if wanted else 0
                _zero(out[at + got : at + stop - within])  # what the file lacks, the padding
                at += stop - within
                offset += stop - within
            if offset >= member_end:
                position += 1

    def _header_of(self, position: int, member: _Member) -> bytes:
        # Reads come in runs end to end: a header split between two is made once, not twice.
        if self._last_header[0] != position:
            self._last_header = (position, _header(member.name, member.mode, member.size))
        return self._last_header[1]

    def close(self) -> None:
        """Close the file kept open for reads."""
        if self._open is not None:
            os.close(self._open[1])
            self._open = None

    def _file_pieces(self, member: _Member, size: int) -> Iterator[bytes]:
        try:
            fd = _open_file(os.path.join(self._root, member.name))
        except OSError:
            fd = None
        done = 0
        try:
            while done < size:
                want = min(_READ_BYTES, size - done)
                data = b""
                if fd is not None:
                    try:
                        data = os.pread(fd, want, done)
                    except OSError:
                        data = b""
                if len(data) < want:  # shrank, or unreadable: keep the layout
                    data += bytes(want - len(data))
                yield data
                done += want
        finally:
            if fd is not None:
                os.close(fd)

    def _pread_into(self, member: _Member, offset: int, out: memoryview) -> int:
        """Read the member's file from ``offset`` into ``out``; fewer bytes only at its end."""
        if self._open is None or self._open[0] != member.name:
            self.close()
            self._open = (member.name, _open_file(os.path.join(self._root, member.name)))
        return read_full(self._open[1], out, offset)


def read_full(fd: int, out: memoryview, offset: int) -> int:
    """Fill ``out`` from the file ``fd`` at ``offset``, straight into it; how many bytes (fewer
    only at its end)."""
    got = 0
    while got < len(out):
        count = os.preadv(fd, [out[got:]], offset + got)
        if count == 0:
            break
        got += count
    return got


def _zero(out: memoryview) -> None:
    while out:
        count = min(len(out), len(_ZEROS))
        out[:count] = _ZEROS[:count]
        out = out[count:]


def _one_block(name: str, size: int | None) -> bool:
    """Whether tarfile writes the member's header as one ustar block: its name (a directory's
    with its slash) fits the name field in ASCII and its size the octal digits; else it adds a
    PAX header."""
    fits = len(name) + (size is None) <= _NAME_BYTES and (size or 0) < _SIZE_LIMIT
    return fits and name.isascii()


def _header_bytes(name: str, mode: int, size: int | None) -> int:
    """How long ``_header`` of the member is (made only to measure one with a PAX header)."""
    return _BLOCK if _one_block(name, size) else len(_header(name, mode, size))


def _header(name: str, mode: int, size: int | None) -> bytes:
    """The member's header as ``pack_tree`` writes it (``member_info``, PAX format).

    A one-block header is tarfile's own header of a member of the same kind and mode with its
    name and size put in, and its checksum added up from the template's: tarfile takes some
    20 us a header, more than reading and hashing a small file costs, and a tree's tar is
    re-made header by header on every delta update (the tests hold both byte-equal).
    """
    if not _one_block(name, size):
        return _tar_header(name, mode, size)
    key = (size is None, bool(mode & 0o111))
    template = _TEMPLATES.get(key)
    if template is None:
        template = _TEMPLATES[key] = _template(_tar_header("", mode, None if size is None else 0))
    encoded = (name + "/" if size is None else name).encode("ascii")
    size_field = b"%011o\0" % (size or 0)
    checksum = template.sum + sum(encoded) + sum(size_field)
    return b"".join(
        (
            encoded,
            _ZEROS[: _NAME_BYTES - len(encoded)],
            template.before_size,
            size_field,
            template.before_sum,
            b"%06o\0 " % checksum,
            template.after_sum,
        )
    )


class _Template(NamedTuple):
    """A one-block header of tarfile's without its name, size and checksum fields (bytes 0-99,
    124-135, 148-155), and what the rest adds to the checksum, which counts its own field as
    eight spaces."""

    before_size: bytes
    before_sum: bytes
    after_sum: bytes
    sum: int


def _template(header: bytes) -> _Template:
    parts = (header[_NAME_BYTES:124], header[136:148], header[156:_BLOCK])
    return _Template(*parts, sum(parts[0]) + sum(parts[1]) + sum(parts[2]) + 8 * ord(" "))


def _tar_header(name: str, mode: int, size: int | None) -> bytes:
    return member_info(name, mode, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _open_file(path: str) -> int:
    # A seed is read whole on every delta update: with access times kept, that would dirty
    # every inode of the booted tree (relatime updates one a day, and at the first read after
    # a change), and their writeback would compete with the new slot's writes. O_NOATIME needs
    # the file's owner or CAP_FOWNER, as the service has; without them, a plain read.
    try:
        return os.open(path, _OPEN_FLAGS | os.O_NOATIME)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
    return os.open(path, _OPEN_FLAGS)


def _walk(root: Path) -> Iterator[tuple[str, int, int | None]]:
    """(member name, mode, size or ``None`` for a directory), in ``pack_tree``'s order."""
    for name, _, details in walk_tree(root, lenient=True):
        size = None if stat.S_ISDIR(details.st_mode) else details.st_size
        yield name, details.st_mode, size
