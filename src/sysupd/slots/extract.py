"""Extract a verified tree payload (tar, optionally zstd) into an empty slot directory.

Responsibility: turn a sequential stream of already-verified tar bytes into a file tree under
``dest`` through our own allow-list. Headers are read by ``sysupd.slots._tarstream`` (tarfile
only parses single 512-byte header blocks there); every file and directory is created here,
relative to directory descriptors, never by ``TarFile.extract``. The Python on our devices
predates CPython's 2025 tarfile fixes (CVE-2025-4517 and its siblings), so none of tarfile's
extraction filters, nor its pax and sparse parsing, are relied upon.

Invariants:

- Nothing is created outside ``dest``: names are split and checked here (relative, no ``..``, no
  NUL, bounded depth and length) and every component is opened with ``O_NOFOLLOW`` relative to
  its parent's descriptor, so no link, in the archive or planted by a racing process, is followed.
- Only regular files and directories are written. Links, devices, FIFOs, sparse and unknown
  types, setuid/setgid bits, duplicate paths and file/directory clashes raise
  ``VerificationError`` before anything is written for that member.
- Modes come from a fixed mask (directories 0o755, files 0o644 or 0o755); owners are never
  applied; file mtimes are.
- Files never hold more than ``ExtractLimits.max_total_bytes`` in all: declared sizes are checked
  before a file is created, and copied bytes are counted as they are written. No more than
  ``ExtractLimits.max_entries`` members are written: the one after them is refused when its
  header is read, before anything is written for it.
- Memory stays flat: file data is read straight into the writer's pool of reused buffers,
  extended headers are capped, sparse maps are refused before they are read.
- The archive must end with an end-of-archive block followed only by a little zero padding;
  anything else is reported as truncated or corrupt.
- A returned ``ExtractStats`` means every file and directory written has been fsynced (see
  ``sysupd.slots._treewriter`` for how that is kept cheap).
- File creation and writing run on one worker thread (``ThreadedTreeWriter``), in archive
  order, beside the parsing here and the chunk hashing of the payload stream; the allow-list
  and the size limits are applied here, before anything is handed to it. Its errors come back
  here in order, and it is stopped and joined before this returns or raises.
- On error ``dest`` is left as it is (the caller wipes the inactive slot) and no descriptor leaks.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from tarfile import (
    AREGTYPE,
    BLKTYPE,
    CHRTYPE,
    CONTTYPE,
    DIRTYPE,
    FIFOTYPE,
    GNUTYPE_SPARSE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    TarInfo,
)
from typing import BinaryIO, Literal

from sysupd.errors import VerificationError
from sysupd.slots._tarstream import TarStream
from sysupd.slots._tarstream import refused as _refused
from sysupd.slots._treewriter import Entry, ThreadedTreeWriter, open_empty_directory

__all__ = ["MAX_MEMBERS", "ExtractLimits", "ExtractStats", "extract_tree"]

_MAX_DEPTH = 64  # path components
_MAX_NAME_BYTES = 255  # one component, as NAME_MAX
_MAX_PATH_BYTES = 4095  # a whole path, as PATH_MAX without the NUL
_MAX_MTIME_S = 1 << 33  # later mtimes (year 2242+) are left unset
_DIR_MODE = 0o755
_FILE_MODE = 0o644
_EXEC_FILE_MODE = 0o755

_FILE_TYPES = frozenset({REGTYPE, AREGTYPE})
_REFUSED_TYPES = {
    SYMTYPE: "a symbolic link",
    LNKTYPE: "a hard link",
    CHRTYPE: "a character device",
    BLKTYPE: "a block device",
    FIFOTYPE: "a FIFO",
    CONTTYPE: "a contiguous file",
    GNUTYPE_SPARSE: "a sparse file",
}


MAX_MEMBERS = 1_000_000
"""The most files and directories a tree may hold on this device, whatever its release states
(empty files cost inodes, which the slot's byte capacity does not count)."""


@dataclass(frozen=True, slots=True)
class ExtractLimits:
    """What a tree payload may hold, taken from the signed release metadata."""

    max_total_bytes: int  # sum of regular-file sizes
    max_entries: int = MAX_MEMBERS  # files and directories listed in the archive

    def __post_init__(self) -> None:
        if self.max_total_bytes < 0 or self.max_entries < 0:
            raise ValueError("extract limits must not be negative")


@dataclass(frozen=True, slots=True)
class ExtractStats:
    """What an extraction wrote."""

    files: int
    directories: int  # created, including parents the archive did not list
    bytes_written: int


def extract_tree(
    source: BinaryIO,
    dest: Path,
    limits: ExtractLimits,
    *,
    compression: Literal["none", "zstd"] = "none",
) -> ExtractStats:
    """Extract the verified tar stream ``source`` into the empty directory ``dest``.

    ``source`` is read sequentially to its end and never closed. Errors raised by ``source``
    itself (``OSError``, ``SysupdError``) pass through unchanged.

    Raises:
        VerificationError: a member is not allowed, a limit is exceeded, or the archive is
            truncated or corrupt.
        InstallError: ``dest`` is missing or not empty, or writing to it failed (full disk, I/O).
    """
    if compression not in ("none", "zstd"):
        raise ValueError(f"unknown compression {compression!r}")
    root_fd = open_empty_directory(dest)
    writer = ThreadedTreeWriter(root_fd)
    written = 0
    try:
        with TarStream(source, compression) as tar:
            for entries, info in enumerate(tar.members(), start=1):
                if entries > limits.max_entries:
                    raise VerificationError(
                        f"the archive lists more than the {limits.max_entries} members"
                        " (files and directories) the release states"
                    )
                entry = _plan_member(info)
                if entry.is_dir:
                    writer.add_directory(entry)
                    continue
                if entry.size > limits.max_total_bytes - written:
                    raise _over_budget(entry, limits)
                writer.begin_file(entry)
                left = entry.size
                while left:
                    buffer = writer.buffer(left)
                    count = tar.readinto(buffer)  # not 0: the archive cannot end inside
                    if written + count > limits.max_total_bytes:
                        raise _over_budget(entry, limits)
                    writer.write(buffer[:count])
                    written += count
                    left -= count
                writer.end_file()
        writer.finish()
    finally:
        writer.close()
        os.close(root_fd)
    return ExtractStats(writer.files, writer.directories, written)


def _over_budget(entry: Entry, limits: ExtractLimits) -> VerificationError:
    return _refused(
        entry.member,
        f"files would hold more than the {limits.max_total_bytes} bytes the release allows",
    )


# The pure core: what may be written, and how.


def _plan_member(info: TarInfo) -> Entry:
    """Check one member against the allow-list and say how to write it.

    Raises:
        VerificationError: naming the member and the reason.
    """
    kind = _REFUSED_TYPES.get(info.type)
    if kind is not None:
        raise _refused(info.name, f"it is {kind}")
    is_dir = info.type == DIRTYPE
    if not is_dir and info.type not in _FILE_TYPES:
        raise _refused(info.name, f"its type {info.type!r} is not a file or a directory")
    if info.issparse():
        raise _refused(info.name, "it is a sparse file")
    if info.mode & (stat.S_ISUID | stat.S_ISGID):
        raise _refused(info.name, "it carries a setuid or setgid bit")
    if is_dir and info.size != 0:
        raise _refused(info.name, "it is a directory with data")
    parts = _split_name(info.name)
    executable = bool(info.mode & 0o111)
    mode = _DIR_MODE if is_dir else (_EXEC_FILE_MODE if executable else _FILE_MODE)
    mtime = info.mtime
    mtime_ns = int(mtime * 1_000_000_000) if 0 <= mtime <= _MAX_MTIME_S else None
    return Entry(info.name, parts, is_dir, mode, info.size, mtime_ns)


def _split_name(name: str) -> tuple[str, ...]:
    """The in-tree components of a member name; ``a/./b/`` and ``a/b`` are the same path."""
    if not name:
        raise _refused(name, "its name is empty")
    if "\x00" in name:
        raise _refused(name, "its name holds a NUL byte")
    if name.startswith("/"):
        raise _refused(name, "its path is absolute")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _refused(name, "its path has a '..' component")
    if not parts:
        raise _refused(name, "its name is only '.'")
    if len(parts) > _MAX_DEPTH:
        raise _refused(name, f"its path is deeper than {_MAX_DEPTH} components")
    if any(len(os.fsencode(part)) > _MAX_NAME_BYTES for part in parts):
        raise _refused(name, f"a path component is longer than {_MAX_NAME_BYTES} bytes")
    if len(os.fsencode("/".join(parts))) > _MAX_PATH_BYTES:
        raise _refused(name, f"its path is longer than {_MAX_PATH_BYTES} bytes")
    return parts


# The writing side: the tree under one directory descriptor.
