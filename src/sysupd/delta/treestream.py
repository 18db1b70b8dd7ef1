"""The tar a directory tree would be released as, re-created on the device with random access.

A tree release is a deterministic tar (``release.payloads.pack_tree``: sorted members, owner 0,
mtime 0, permission bits). So a tree the device holds — the booted slot's files — stands for the
plain payload it was installed from, and for the unchanged parts of any later release: this
module lays it out as that tar without writing it anywhere. ``TreeTar`` walks the tree once
(names, modes and sizes only) and can then stream the tar, or read any span of it: headers are
re-made with the release tool's own ``member_info``, file bytes read with ``pread``.

Invariants: the layout is the one ``pack_tree`` writes for the same tree (a test holds them
byte-equal); only regular files and directories with UTF-8 names are members (anything else in
the tree is left out, as no release holds it); memory is one small record per member. The bytes
read are never trusted: whoever uses them checks their hash, so a file that changed since the
walk only makes its chunks miss.
"""

from __future__ import annotations

import bisect
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sysupd.release.payloads import member_info, walk_tree

__all__ = ["TreeTar"]

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_READ_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class _Member:
    start: int
    """Where its header starts in the tar."""
    name: str
    mode: int
    size: int | None
    """``None`` for a directory."""
    header_bytes: int

    @property
    def data_start(self) -> int:
        return self.start + self.header_bytes

    @property
    def end(self) -> int:
        """Where the next member starts (data padded to whole blocks)."""
        size = self.size or 0
        return self.data_start + -(-size // _BLOCK) * _BLOCK


class TreeTar:
    """The release tar of the tree under ``root``, laid out without being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._members: list[_Member] = []
        self._starts: list[int] = []
        offset = 0
        for name, mode, size in _walk(root):
            header = _header(name, mode, size)
            member = _Member(offset, name, mode, size, len(header))
            self._members.append(member)
            self._starts.append(offset)
            offset = member.end
        self._body = offset
        ended = offset + 2 * _BLOCK
        self.length = ended + (-ended % _RECORD)
        """The tar's length: members, two zero blocks, zeros to a whole record."""
        self._open: tuple[str, int] | None = None

    @property
    def members(self) -> int:
        """How many files and directories the tar holds."""
        return len(self._members)

    def stream(self) -> Iterator[bytes]:
        """The whole tar, in pieces of at most a MiB (a file that shrank since the walk is
        padded with zeros, so the layout holds; its chunks will not match)."""
        for member in self._members:
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

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the tar from ``offset``.

        Raises:
            OSError: a file cannot be read, or the span is outside the tar.
        """
        if offset < 0 or length < 0 or offset + length > self.length:
            raise OSError(f"bytes {offset}+{length} are outside the tree's tar of {self.length}")
        parts: list[bytes] = []
        position = bisect.bisect_right(self._starts, offset) - 1
        end = offset + length
        while offset < end:
            if position < 0 or position >= len(self._members):  # the zeros after the members
                parts.append(bytes(end - offset))
                break
            member = self._members[position]
            if offset >= member.end:
                position += 1
                continue
            if offset < member.data_start:
                header = _header(member.name, member.mode, member.size)
                take = header[offset - member.start : min(end, member.data_start) - member.start]
            else:
                within = offset - member.data_start
                size = member.size or 0
                stop = min(end, member.end) - member.data_start
                data = self._pread(member, within, max(0, min(stop, size) - within))
                take = data + bytes(stop - within - len(data))
            parts.append(take)
            offset += len(take)
        return b"".join(parts)

    def close(self) -> None:
        """Close the file kept open for reads."""
        if self._open is not None:
            os.close(self._open[1])
            self._open = None

    def _file_pieces(self, member: _Member, size: int) -> Iterator[bytes]:
        try:
            fd = _open_file(self.root / member.name)
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

    def _pread(self, member: _Member, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if self._open is None or self._open[0] != member.name:
            self.close()
            self._open = (member.name, _open_file(self.root / member.name))
        return os.pread(self._open[1], length, offset)


def _header(name: str, mode: int, size: int | None) -> bytes:
    return member_info(name, mode, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _open_file(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def _walk(root: Path) -> Iterator[tuple[str, int, int | None]]:
    """(member name, mode, size or ``None`` for a directory), in ``pack_tree``'s order."""
    for name, _, details in walk_tree(root, lenient=True):
        size = None if stat.S_ISDIR(details.st_mode) else details.st_size
        yield name, details.st_mode, size
