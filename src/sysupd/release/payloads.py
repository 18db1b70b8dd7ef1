"""Making a release payload: a deterministic tar of a file tree (optionally zstd) or a raw image.

Both streams go through ``PayloadSink``, which writes the bytes to a destination file while
hashing them: SHA-256 over the whole payload and SHA-256 over each consecutive ``chunk_size``-byte
chunk (the chunk list of ``docs/design/release-format.md``). Nothing is held in memory beyond one
copy buffer and the chunk digests (32 bytes per chunk: 8 KiB per GiB at 4 MiB chunks).

Invariants of a tree payload:

- members are the source's regular files and directories only, in sorted order (each directory
  before its entries, entries by name); a symlink, device, FIFO or socket anywhere in the tree is
  refused with a ``ConfigError`` naming its path, and so is a name that is not valid UTF-8;
- every member has uid/gid 0, empty owner names, mtime 0 and the mode a device installs it
  with (directories and files with an execute bit 0o755, other files 0o644), so the same tree
  always gives the same bytes (PAX format; no time- or host-dependent headers);
- a file is opened without following links and its size is taken from the open file, so a file
  swapped for a link while packing is refused rather than followed;
- ``installed_size`` is the sum of the regular files' sizes, ``entries`` the number of members
  (regular files and directories; the tree's root is not one);
- a ``tar.zst`` payload is one zstd frame with a content checksum and a window of
  2**``ZSTD_WINDOW_LOG`` bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from sysupd.errors import ConfigError

__all__ = [
    "COPY_BLOCK_BYTES",
    "ZSTD_LEVEL",
    "ZSTD_WINDOW_LOG",
    "PayloadDigest",
    "PayloadSink",
    "copy_image",
    "member_info",
    "pack_tree",
    "walk_tree",
]

COPY_BLOCK_BYTES = 1024 * 1024
ZSTD_LEVEL = 9  # a good ratio at a speed that suits multi-GiB trees
ZSTD_WINDOW_LOG = 22  # 4 MiB: what a device needs to decompress, whatever the zstd version


@dataclass(frozen=True)
class PayloadDigest:
    """What was written: the payload's length, hashes, installed size and member count."""

    length: int
    sha256: str
    chunk_digests: bytes
    """The chunk list: one 32-byte SHA-256 digest per ``chunk_size`` chunk, in order."""
    installed_size: int
    entries: int | None = None
    """A tree's tar members (regular files and directories); ``None`` for an image."""


class PayloadSink:
    """A write-only stream that passes bytes to ``destination`` and hashes them on the way."""

    def __init__(self, destination: BinaryIO, chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk size must be positive, not {chunk_size}")
        self._destination = destination
        self._chunk_size = chunk_size
        self._whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._in_chunk = 0
        self._digests = bytearray()
        self._length = 0

    def write(self, data: bytes, /) -> int:
        """Write and hash ``data``."""
        view = memoryview(data)
        self._destination.write(view)
        self._whole.update(view)
        self._length += len(view)
        while view:
            part = view[: self._chunk_size - self._in_chunk]
            self._chunk.update(part)
            self._in_chunk += len(part)
            view = view[len(part) :]
            if self._in_chunk == self._chunk_size:
                self._end_chunk()
        return len(data)

    def finish(self, installed_size: int, entries: int | None = None) -> PayloadDigest:
        """Close the last (short) chunk and return the digests."""
        if self._in_chunk:
            self._end_chunk()
        return PayloadDigest(
            length=self._length,
            sha256=self._whole.hexdigest(),
            chunk_digests=bytes(self._digests),
            installed_size=installed_size,
            entries=entries,
        )

    def _end_chunk(self) -> None:
        self._digests += self._chunk.digest()
        self._chunk = hashlib.sha256()
        self._in_chunk = 0

    # The rest of tarfile's file-object protocol: a sink neither reads nor seeks.
    def read(self, size: int, /) -> bytes:
        """Not readable."""
        raise OSError("a payload sink is write-only")

    def seek(self, pos: int, /) -> int:
        """Not seekable."""
        raise OSError("a payload sink cannot seek")

    def tell(self) -> int:
        """Bytes written so far."""
        return self._length

    def close(self) -> None:
        """Nothing to release; the caller owns the destination."""


class _ZstdStage:
    """Compresses what is written to it into one zstd frame written to ``sink``."""

    def __init__(self, sink: PayloadSink) -> None:
        self._sink = sink
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, write_checksum=1
        )
        self._compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def write(self, data: bytes, /) -> int:
        out = self._compressor.compress(data)
        if out:
            self._sink.write(out)
        return len(data)

    def finish(self) -> None:
        self._sink.write(self._compressor.flush())

    def read(self, size: int, /) -> bytes:
        raise OSError("a compression stage is write-only")

    def seek(self, pos: int, /) -> int:
        raise OSError("a compression stage cannot seek")

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        """The tar stream closes its file object; the frame is ended by ``finish``."""


def pack_tree(
    source: Path,
    destination: BinaryIO,
    *,
    compress: bool,
    chunk_size: int,
    tap: Callable[[bytes], None] | None = None,
) -> PayloadDigest:
    """Write a tar of the tree under ``source`` (zstd if ``compress``) to ``destination``;
    ``tap`` (if given) is handed the uncompressed tar as it is made.

    Raises:
        ConfigError: ``source`` holds something other than regular files and directories, a name
            that is not UTF-8, or a file that cannot be read (the message names the path).
        OSError: writing ``destination`` failed.
    """
    sink = PayloadSink(destination, chunk_size)
    stage = _ZstdStage(sink) if compress else None
    plain: _ZstdStage | PayloadSink = stage or sink
    out = plain if tap is None else _Tee(plain, tap)
    installed_size = 0
    entries = 0
    with tarfile.open(
        fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8"
    ) as archive:
        for name, path, details in walk_tree(source):
            entries += 1
            if stat.S_ISDIR(details.st_mode):
                archive.addfile(member_info(name, details.st_mode, None))
                continue
            with _open_regular(path) as handle:
                opened = os.fstat(handle.fileno())  # the size of what is read, not what was listed
                info = member_info(name, opened.st_mode, opened.st_size)
                archive.addfile(info, _SourceFile(path, handle, info.size))
            installed_size += info.size
    if stage is not None:
        stage.finish()
    return sink.finish(installed_size, entries)


def member_info(name: str, mode: int, size: int | None) -> tarfile.TarInfo:
    """The tar member of a tree payload: a directory (``size`` ``None``) or a regular file,
    with owner 0, no owner names, mtime 0 and the mode a device installs it with. A device that
    re-creates a release's tar from a tree it holds uses this too, so both give the same bytes.
    """
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    # The modes a device's extractor gives (sysupd.slots.extract): 0o755 for directories and
    # files with an execute bit, 0o644 for others. Stating them as installed makes the tar a
    # device re-creates from its own tree the same bytes, which delta updates rely on.
    executable = size is None or bool(mode & 0o111)
    info.mode = 0o755 if executable else 0o644
    if size is None:
        info.type = tarfile.DIRTYPE
    else:
        info.type = tarfile.REGTYPE
        info.size = size
    return info


def copy_image(
    source: Path,
    destination: BinaryIO,
    *,
    chunk_size: int,
    tap: Callable[[bytes], None] | None = None,
) -> PayloadDigest:
    """Copy the image file ``source`` to ``destination`` as it is; ``tap`` (if given) is handed
    the image as it is copied.

    Raises:
        ConfigError: ``source`` cannot be read.
        OSError: writing ``destination`` failed.
    """
    sink = PayloadSink(destination, chunk_size)
    try:
        handle = source.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot read the image {source}: {exc.strerror}") from exc
    with handle:
        while True:
            try:
                block = handle.read(COPY_BLOCK_BYTES)
            except OSError as exc:
                raise ConfigError(f"cannot read the image {source}: {exc.strerror}") from exc
            if not block:
                break
            sink.write(block)
            if tap is not None:
                tap(block)
    return sink.finish(installed_size=sink.tell())


class _Tee:
    """Passes what is written to it on to ``out`` and to ``tap``."""

    def __init__(self, out: _ZstdStage | PayloadSink, tap: Callable[[bytes], None]) -> None:
        self._out = out
        self._tap = tap

    def write(self, data: bytes, /) -> int:
        self._out.write(data)
        self._tap(bytes(data))
        return len(data)

    def read(self, size: int, /) -> bytes:
        raise OSError("a tee is write-only")

    def seek(self, pos: int, /) -> int:
        raise OSError("a tee cannot seek")

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        """The caller ends the stages."""


def walk_tree(top: Path, *, lenient: bool = False) -> Iterator[tuple[str, str, os.stat_result]]:
    """(member name, path, ``lstat``) of every regular file and directory under ``top``, in tar
    order (each directory before its entries, entries by name).

    Strict (the release tool's): anything else, a name that is not UTF-8 or a directory that
    cannot be listed is a ``ConfigError`` naming it. ``lenient`` (a device re-creating a
    release's tar from a tree it holds): those are left out.

    Paths are strings and each entry is stat'ed through its directory listing: a device walks
    its booted tree (tens of thousands of files) on every delta update, and ``Path`` objects
    took half of that walk's time.
    """
    pending = [_entries(os.fspath(top), "", lenient)]
    while pending:
        entry = next(pending[-1], None)
        if entry is None:
            pending.pop()
            continue
        yield entry
        name, path, details = entry
        if stat.S_ISDIR(details.st_mode):
            pending.append(_entries(path, f"{name}/", lenient))


def _entries(
    directory: str, prefix: str, lenient: bool
) -> Iterator[tuple[str, str, os.stat_result]]:
    try:
        with os.scandir(directory) as scan:
            listed = sorted(scan, key=_name)
    except OSError as exc:
        if lenient:
            return
        raise ConfigError(f"cannot list {directory}: {exc.strerror}") from exc
    for entry in listed:
        name, path = entry.name, entry.path
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            if lenient:
                continue
            raise ConfigError(f"{path!r} has a name that is not valid UTF-8") from exc
        try:
            details = entry.stat(follow_symlinks=False)
        except OSError as exc:
            if lenient:
                continue
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        if stat.S_ISDIR(details.st_mode) or stat.S_ISREG(details.st_mode):
            yield f"{prefix}{name}", path, details
        elif not lenient:
            raise ConfigError(
                f"{path} is {_describe(details.st_mode)}: releases contain regular files and "
                "directories only"
            )


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


class _SourceFile:
    """A source file read by tarfile: read errors and shrinking name the file."""

    def __init__(self, path: str, handle: BinaryIO, size: int) -> None:
        self._path = path
        self._handle = handle
        self._left = size

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self._handle.read(size)
        except OSError as exc:
            raise ConfigError(f"cannot read {self._path}: {exc.strerror}") from exc
        self._left -= len(data)
        if self._left > 0 and (size < 0 or len(data) < size):
            raise ConfigError(f"{self._path} shrank while it was being packed")
        return data


def _open_regular(path: str) -> BinaryIO:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path} changed into something other than a regular file")
    return os.fdopen(fd, "rb")


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file or directory"
