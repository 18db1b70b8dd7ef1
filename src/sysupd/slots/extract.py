"""Extract a verified tree payload (tar, optionally zstd) into an empty slot directory.

Responsibility: turn a sequential stream of already-verified tar bytes into a file tree under
``dest`` through our own allow-list. tarfile only parses headers, in stream mode; every file and
directory is created here, relative to directory descriptors, never by ``TarFile.extract``. The
Python on our devices predates CPython's 2025 tarfile fixes (CVE-2025-4517 and its siblings), so
none of tarfile's extraction filters are relied upon.

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
  before a file is created, and copied bytes are counted as they are written.
- Memory stays flat: one reusable copy buffer, tarfile's member list is dropped as it grows,
  extended headers are capped, GNU sparse maps are refused before tarfile reads them.
- The archive must end with an end-of-archive block followed only by a little zero padding;
  anything else is reported as truncated or corrupt.
- A returned ``ExtractStats`` means every file and directory written has been fsynced.
- On error ``dest`` is left as it is (the caller wipes the inactive slot) and no descriptor leaks.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from tarfile import (
    AREGTYPE,
    BLKTYPE,
    CHRTYPE,
    CONTTYPE,
    DIRTYPE,
    FIFOTYPE,
    GNUTYPE_LONGLINK,
    GNUTYPE_LONGNAME,
    GNUTYPE_SPARSE,
    LNKTYPE,
    REGTYPE,
    SOLARIS_XHDTYPE,
    SYMTYPE,
    XGLTYPE,
    XHDTYPE,
    HeaderError,
    TarError,
    TarFile,
    TarInfo,
)
from typing import BinaryIO, Literal, NoReturn, Self

import zstandard

from sysupd.errors import InstallError, SysupdError, VerificationError

__all__ = ["ExtractLimits", "ExtractStats", "extract_tree"]

_CHUNK_BYTES = 1 << 20  # one reusable copy buffer
_FSYNC_BATCH_FILES = 128  # written files kept open, then fsynced together
_MAX_DEPTH = 64  # path components
_MAX_NAME_BYTES = 255  # one component, as NAME_MAX
_MAX_PATH_BYTES = 4095  # a whole path, as PATH_MAX without the NUL
_MAX_EXTENDED_HEADER_BYTES = 8 << 10  # pax or GNU long-name data before a member
_MAX_TRAILER_BYTES = 1 << 20  # zero padding allowed after the end-of-archive block
_TRAILER_READ_BYTES = 64 << 10
_ZSTD_MAX_WINDOW_BYTES = 1 << 27  # zstd's own default limit, stated so it cannot drift
_MAX_MTIME_S = 1 << 33  # later mtimes (year 2242+) are left unset
_DIR_MODE = 0o755
_FILE_MODE = 0o644
_EXEC_FILE_MODE = 0o755

# Public in every CPython 3 tarfile, though in neither its __all__ nor typeshed: the header error
# that means "a zero block", a proper end of archive rather than a cut or garbled one.
_END_OF_ARCHIVE: type[HeaderError] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
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
_EXTENDED_TYPES = frozenset({XHDTYPE, XGLTYPE, SOLARIS_XHDTYPE, GNUTYPE_LONGNAME, GNUTYPE_LONGLINK})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class ExtractLimits:
    """What a tree payload may hold, taken from the signed release metadata."""

    max_total_bytes: int  # sum of regular-file sizes
    max_entries: int = 1_000_000  # files and directories listed in the archive

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
    root_fd = _open_empty_directory(dest)
    writer = _TreeWriter(root_fd, limits)
    try:
        with _open_archive(source, compression) as tar:
            for entries, info in enumerate(_members(tar), start=1):
                if entries > limits.max_entries:
                    raise VerificationError(
                        f"the archive lists more than {limits.max_entries} members"
                    )
                entry = _plan_member(info)
                if entry.is_dir:
                    writer.add_directory(entry)
                else:
                    writer.add_file(entry, _member_data(tar, info))
        writer.finish()
    finally:
        writer.close()
        os.close(root_fd)
    return ExtractStats(writer.files, writer.directories, writer.bytes_written)


# The pure core: what may be written, and how.


@dataclass(frozen=True, slots=True)
class _Entry:
    """One allowed member, as it will be written."""

    member: str  # the name in the archive, for messages
    parts: tuple[str, ...]
    is_dir: bool
    mode: int
    size: int
    mtime_ns: int | None

    @property
    def path(self) -> str:
        return "/".join(self.parts)


def _refused(member: str, reason: str) -> VerificationError:
    return VerificationError(f"archive member {member!r} is refused: {reason}")


def _plan_member(info: TarInfo) -> _Entry:
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
    return _Entry(info.name, parts, is_dir, mode, info.size, mtime_ns)


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


# The reading side: tarfile in stream mode, with its gaps closed and its errors translated.


class _GuardedTarInfo(TarInfo):
    """A TarInfo that bounds what tarfile reads for a header and records why headers stopped."""

    __slots__ = ()

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        # Checked before tarfile acts on the size: a negative one would move it backwards, a
        # large extended header would be read into memory whole (and pax parsing is quadratic).
        if info.size < 0:
            raise _refused(info.name, "its header declares a negative size")
        if info.type in _EXTENDED_TYPES and info.size > _MAX_EXTENDED_HEADER_BYTES:
            raise VerificationError(
                f"the archive has an extended header of {info.size} bytes"
                f" (at most {_MAX_EXTENDED_HEADER_BYTES} allowed)"
            )
        return info

    @classmethod
    def fromtarfile(cls, tarfile: TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile)
        except HeaderError as exc:
            if isinstance(tarfile, _GuardedTarFile):
                tarfile.stopped_by = exc
            raise

    # tarfile reads GNU sparse maps while parsing pax headers, the 1.0 map with no bound on its
    # length; refuse every sparse format before that read happens.
    def _proc_gnusparse_00(self, *args: object) -> NoReturn:
        member = args[0] if args else None
        raise _refused(member.name if isinstance(member, TarInfo) else "?", "it is a sparse file")

    _proc_gnusparse_01 = _proc_gnusparse_00
    _proc_gnusparse_10 = _proc_gnusparse_00


class _GuardedTarFile(TarFile):
    """A stream-mode TarFile that forgets members once read, so memory stays flat."""

    tarinfo = _GuardedTarInfo
    members: list[TarInfo]
    stopped_by: HeaderError | None = None

    def next(self) -> TarInfo | None:
        info = super().next()
        self.members.clear()  # only random access needs them, and a stream has none
        return info


@contextmanager
def _parser_errors() -> Iterator[None]:
    """Translate what tarfile and zstandard raise on bad bytes into ``VerificationError``."""
    try:
        yield
    except RecursionError as exc:  # a long chain of extended headers
        raise VerificationError("the archive's headers are nested too deeply") from exc
    except (TarError, EOFError, ValueError, OverflowError, zstandard.ZstdError) as exc:
        raise VerificationError(f"the archive is truncated or corrupt: {exc}") from exc


@contextmanager
def _open_archive(source: BinaryIO, compression: str) -> Iterator[_GuardedTarFile]:
    with ExitStack() as stack:
        stream = source
        if compression == "zstd":
            decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW_BYTES)
            reader = decompressor.stream_reader(source, read_across_frames=True, closefd=False)
            stream = stack.enter_context(reader)
        with _parser_errors():
            tar = _GuardedTarFile.open(name=None, mode="r|", fileobj=stream)
        yield stack.enter_context(tar)


def _members(tar: _GuardedTarFile) -> Iterator[TarInfo]:
    """Every member in order; at the end, check the archive was complete and drain the rest."""
    while True:
        with _parser_errors():
            info = tar.next()
        if info is None:
            break
        yield info
    if not isinstance(tar.stopped_by, _END_OF_ARCHIVE):
        raise VerificationError(
            "the archive is truncated or corrupt: it has no end-of-archive block"
        )
    trailer = 0
    while True:
        with _parser_errors():
            chunk = tar.fileobj.read(_TRAILER_READ_BYTES)
        if not chunk:
            return
        if chunk.count(0) != len(chunk):
            raise VerificationError("the archive has data after its end-of-archive block")
        trailer += len(chunk)
        if trailer > _MAX_TRAILER_BYTES:
            raise VerificationError(
                f"the archive has more than {_MAX_TRAILER_BYTES} bytes after its end"
            )


def _member_data(tar: _GuardedTarFile, info: TarInfo) -> io.BufferedIOBase:
    with _parser_errors():
        data = tar.extractfile(info)
    # Always an ExFileObject (a BufferedReader) for a regular member: readinto reuses our buffer.
    if not isinstance(data, io.BufferedIOBase):
        raise TypeError(f"tarfile gave no reader for the regular member {info.name!r}")
    return data


# The writing side: the tree under one directory descriptor.


def _install_error(exc: OSError, path: str) -> InstallError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InstallError(f"no space left in the slot while writing {path!r}")
    if exc.errno == errno.EIO:
        return InstallError(f"I/O error in the slot while writing {path!r}")
    return InstallError(f"cannot write {path!r} in the slot: {exc.strerror or exc}")


def _open_empty_directory(dest: Path) -> int:
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InstallError(f"the slot directory {str(dest)!r} cannot be opened: {exc}") from exc
    try:
        with os.scandir(fd) as listing:
            if next(listing, None) is not None:
                raise InstallError(f"the slot directory {str(dest)!r} is not empty")
    except OSError as exc:
        os.close(fd)
        raise InstallError(f"the slot directory {str(dest)!r} cannot be listed: {exc}") from exc
    except InstallError:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data = data[written:]


class _TreeWriter:
    """Creates directories and files below ``root_fd`` and makes them durable.

    The chain of directories leading to the last member stays open, so members in tar order
    cost one open each; a directory is fsynced when the chain leaves it. Written files are kept
    open in batches and fsynced together: on a journaling filesystem the first fsync of a batch
    commits the others' data too, so this costs about one flush per batch instead of one per file.
    """

    def __init__(self, root_fd: int, limits: ExtractLimits) -> None:
        self._root_fd = root_fd
        self._limits = limits
        self._chain_names: list[str] = []
        self._chain_fds: list[int] = []
        self._implicit: set[tuple[str, ...]] = set()  # made as parents, not (yet) listed
        self._unsynced: list[int] = []
        self._buffer = memoryview(bytearray(_CHUNK_BYTES))
        self.files = 0
        self.directories = 0
        self.bytes_written = 0

    def add_directory(self, entry: _Entry) -> None:
        parent_fd = self._enter(entry.parts[:-1], entry)
        self._make_directory(parent_fd, entry.parts, entry, listed=True)

    def add_file(self, entry: _Entry, data: io.BufferedIOBase) -> None:
        budget = self._limits.max_total_bytes - self.bytes_written
        if entry.size > budget:
            raise self._over_budget(entry)
        parent_fd = self._enter(entry.parts[:-1], entry)
        name = entry.parts[-1]
        try:
            fd = os.open(name, _FILE_FLAGS, entry.mode, dir_fd=parent_fd)
        except FileExistsError as exc:
            raise self._clash(parent_fd, entry.parts, entry) from exc
        except OSError as exc:
            raise _install_error(exc, entry.path) from exc
        self._unsynced.append(fd)
        copied = 0
        while True:
            with _parser_errors():
                count = data.readinto(self._buffer)
            if not count:
                break
            if self.bytes_written + count > self._limits.max_total_bytes:
                raise self._over_budget(entry)
            try:
                _write_all(fd, self._buffer[:count])
            except OSError as exc:
                raise _install_error(exc, entry.path) from exc
            self.bytes_written += count
            copied += count
        if copied != entry.size:
            raise VerificationError(f"the archive is truncated inside member {entry.member!r}")
        try:
            os.fchmod(fd, entry.mode)  # the umask must not decide
            if entry.mtime_ns is not None:
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        except OSError as exc:
            raise _install_error(exc, entry.path) from exc
        self.files += 1
        if len(self._unsynced) >= _FSYNC_BATCH_FILES:
            self._sync_files()

    def finish(self) -> None:
        """Make everything written durable."""
        self._sync_files()
        while self._chain_fds:
            self._leave_directory()
        try:
            os.fsync(self._root_fd)
        except OSError as exc:
            raise _install_error(exc, ".") from exc

    def close(self) -> None:
        """Close every descriptor still open, without syncing (after an error)."""
        while self._unsynced:
            with suppress(OSError):
                os.close(self._unsynced.pop())
        while self._chain_fds:
            self._chain_names.pop()
            with suppress(OSError):
                os.close(self._chain_fds.pop())

    def _over_budget(self, entry: _Entry) -> VerificationError:
        return _refused(
            entry.member,
            f"files would hold more than the {self._limits.max_total_bytes} bytes"
            " the release allows",
        )

    def _enter(self, parts: tuple[str, ...], entry: _Entry) -> int:
        """The descriptor of directory ``parts``, creating missing ones as parents."""
        keep = 0
        for have, want in zip(self._chain_names, parts, strict=False):
            if have != want:
                break
            keep += 1
        while len(self._chain_fds) > keep:
            self._leave_directory()
        while len(self._chain_fds) < len(parts):
            depth = len(self._chain_fds) + 1
            self._make_directory(self._current_fd(), parts[:depth], entry, listed=False)
        return self._current_fd()

    def _current_fd(self) -> int:
        return self._chain_fds[-1] if self._chain_fds else self._root_fd

    def _make_directory(
        self, parent_fd: int, parts: tuple[str, ...], entry: _Entry, *, listed: bool
    ) -> None:
        """Create (or reopen) directory ``parts`` and push it on the open chain."""
        name, path = parts[-1], "/".join(parts)
        created = True
        try:
            os.mkdir(name, _DIR_MODE, dir_fd=parent_fd)
        except FileExistsError:
            created = False
        except OSError as exc:
            raise _install_error(exc, path) from exc
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise self._clash(parent_fd, parts, entry) from exc
            raise _install_error(exc, path) from exc
        self._chain_names.append(name)
        self._chain_fds.append(fd)
        if created:
            try:
                os.fchmod(fd, _DIR_MODE)  # the umask must not decide
            except OSError as exc:
                raise _install_error(exc, path) from exc
            self.directories += 1
            if not listed:
                self._implicit.add(parts)
        elif listed:
            if parts not in self._implicit:
                raise _refused(entry.member, f"the directory {path!r} appears twice")
            self._implicit.discard(parts)

    def _clash(self, parent_fd: int, parts: tuple[str, ...], entry: _Entry) -> SysupdError:
        """Explain why ``parts`` could not be created or entered as ``entry`` needs."""
        path = "/".join(parts)
        try:
            found = os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False).st_mode
        except OSError as exc:
            return _install_error(exc, path)
        if parts != entry.parts:
            if stat.S_ISREG(found):
                return _refused(entry.member, f"it lies under {path!r}, which is a file")
        elif stat.S_ISREG(found):
            if entry.is_dir:
                return _refused(entry.member, f"it is a directory where the file {path!r} is")
            return _refused(entry.member, f"the file {path!r} appears twice")
        elif stat.S_ISDIR(found) and not entry.is_dir:
            return _refused(entry.member, f"it is a file where the directory {path!r} is")
        return InstallError(f"the slot changed during extraction: {path!r} was replaced")

    def _leave_directory(self) -> None:
        self._chain_names.pop()
        fd = self._chain_fds.pop()
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _install_error(exc, "a directory") from exc
        finally:
            os.close(fd)

    def _sync_files(self) -> None:
        try:
            for fd in self._unsynced:
                os.fsync(fd)
            while self._unsynced:
                os.close(self._unsynced.pop())
        except OSError as exc:
            raise _install_error(exc, "files") from exc
