"""The writing side of tree extraction: files and directories under one descriptor, durably.

Responsibility: create what ``sysupd.slots.extract`` allowed, relative to the slot directory's
descriptor, never following a link, and make all of it durable; report clashes (a path twice, a
file where a directory is) in the allow-list's words. ``ThreadedTreeWriter`` runs it on a worker
thread, so file creation and writing overlap the parsing and verification of what follows.

Invariants:

- Every component is created or opened with ``O_NOFOLLOW`` relative to its parent's descriptor;
  files with ``O_EXCL``; modes are set with ``fchmod`` (the umask does not decide).
- Durable when ``finish`` returns: every file is fsynced (in batches, on the
  ``sysupd.slots._durability.BatchSyncer`` thread, which starts the writeback of the whole batch
  first), every directory with the batch being filled when the open chain leaves it (on that
  thread too), and the slot directory last, after every batch. Nothing but fsync is relied upon
  for durability.
- The page cache and descriptors the tree takes stay bounded: at most two batches of files and
  directories (``_FSYNC_BATCH_FILES`` descriptors, about ``_FSYNC_BATCH_BYTES`` each) are open
  and cached; once a batch is fsynced its clean pages are dropped, whatever the tree's size.
- The threaded writer does the operations in the order given, stops at the first error and hands
  it to the extracting thread at its next call; it holds at most ``_QUEUED_BUFFERS`` buffers of
  data and ``_QUEUED_SMALL`` small ones; ``close`` stops it and closes every descriptor.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from sysupd.errors import InstallError, SysupdError
from sysupd.slots._durability import BatchSyncer, advise_dontneed
from sysupd.slots._tarstream import refused

__all__ = ["DATA_BYTES", "Entry", "ThreadedTreeWriter", "install_error", "open_empty_directory"]

DATA_BYTES = 1 << 20  # one buffer of file data
_QUEUED_BUFFERS = 8  # buffers of file data in flight to the writer thread (one a file, at least)
SMALL_BYTES = 64 << 10  # one buffer of a small file's data
_QUEUED_SMALL = 64  # small files' buffers in flight (4 MiB)
_FSYNC_BATCH_FILES = 64  # written files kept open, then fsynced together (two batches open)
_FSYNC_BATCH_BYTES = 16 << 20  # or fewer files, once they hold this many bytes
_WRITEBACK_BYTES = 8 << 20  # a large file's writeback is started each time this many are written
_DIR_MODE = 0o755
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Entry:
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


def install_error(exc: OSError, path: str) -> InstallError:
    """The error for a tree that could not be written at ``path`` ("files": a batch's fsync)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InstallError(f"no space left in the slot while writing {path!r}")
    if exc.errno == errno.EIO:
        return InstallError(f"I/O error in the slot while writing {path!r}")
    return InstallError(f"cannot write {path!r} in the slot: {exc.strerror or exc}")


def open_empty_directory(dest: Path) -> int:
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
    cost one open each; a directory the chain leaves joins the next batch of files, and is
    fsynced with them on the syncer's thread (on this one its fsync held up the file creation
    behind it: a quarter of this thread's time on a tree of 35,000 files); the root last.

    Durability, and why it stays cheap: every file is fsynced before ``finish`` returns, on its
    own descriptor (so a writeback error of that file is reported there, and nothing relies on
    syncfs or on error reporting across descriptors). What makes 1,000+ fsyncs cheap is that the
    writeback of a whole batch (``_FSYNC_BATCH_FILES`` open files or ``_FSYNC_BATCH_BYTES``) is
    started at once before any of it is fsynced (``POSIX_FADV_DONTNEED``, which on Linux starts
    writeback of dirty pages and drops only clean ones; a large file's also every
    ``_WRITEBACK_BYTES`` as it is written): the disk has the batch in flight, and each fsync
    mostly waits for what is already being written, with one journal commit covering the batch.
    This runs on a thread of its own while the next batch is written, so waiting for the disk
    does not stop the writing (in a profile of 1 GiB with zstd, the fsyncs took a third of the
    writer thread's time, and the extracting thread waited for buffers meanwhile). Measured on
    the 2-core VM (1,024 files of 1 MiB): 1.0 s with one fsync per file after writing it, 0.55 s
    with writeback started early; one syncfs(2) at the end was about the same (0.47 s) and would
    report errors less precisely.

    Why the syncer, not this thread, starts a file's writeback when the file ends: this thread is
    what bounds a tree install of many small files (the extracting thread waits for its buffers
    most of the time), and on a tree of 35,000 files starting each one's writeback here took
    2.4-3.1 s of its time; on the syncer's thread, where it overlaps the writing, the bench's
    full install of that tree went from 10.9 s to 8.1-8.6 s (medians of 5 and 3, with the
    deeper queue below; ``scripts/bench delta --forms tree``).

    Why a batch's pages are dropped once it is durable (the same ``POSIX_FADV_DONTNEED``, now on
    clean pages): the next files then reuse the page frames just freed. On a VM whose free memory
    goes back to the host, a write into never-touched page frames costs a host fault per page:
    1 GiB into 1,024 new files took 3.0-3.3 s of system time when the pages were kept, and
    0.4-0.6 s when each 16 MiB batch was dropped after its fsync (batches of 128 MiB: 0.75 s).
    A smaller page cache footprint is also what a device wants from an install.
    """

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._chain_names: list[str] = []
        self._chain_fds: list[int] = []
        self._implicit: set[tuple[str, ...]] = set()  # made as parents, not (yet) listed
        self._unsynced: list[int] = []  # the next batch; the file being written is the last
        self._unsynced_bytes = 0  # data bytes in the files of _unsynced
        self._syncer = BatchSyncer()
        self._file: Entry | None = None
        self._copied = self._started = 0  # its bytes written, and those whose writeback started
        self.files = 0
        self.directories = 0

    def add_directory(self, entry: Entry) -> None:
        parent_fd = self._enter(entry.parts[:-1], entry)
        self._make_directory(parent_fd, entry.parts, entry, listed=True)

    def begin_file(self, entry: Entry) -> None:
        """Create the file; its data follows with ``write``, then ``end_file``."""
        parent_fd = self._enter(entry.parts[:-1], entry)
        try:
            fd = os.open(entry.parts[-1], _FILE_FLAGS, entry.mode, dir_fd=parent_fd)
        except FileExistsError as exc:
            raise self._clash(parent_fd, entry.parts, entry) from exc
        except OSError as exc:
            raise install_error(exc, entry.path) from exc
        self._unsynced.append(fd)
        self._file, self._copied, self._started = entry, 0, 0

    def write(self, data: memoryview) -> None:
        """Append to the file begun last."""
        assert self._file is not None
        fd = self._unsynced[-1]
        try:
            _write_all(fd, data)
        except OSError as exc:
            raise install_error(exc, self._file.path) from exc
        self._copied += len(data)
        if self._copied - self._started >= _WRITEBACK_BYTES:
            advise_dontneed(fd, self._started, self._copied - self._started)
            self._started = self._copied

    def end_file(self) -> None:
        """Give the file begun last its mode and mtime (its batch's syncer starts its
        writeback)."""
        entry, fd = self._file, self._unsynced[-1]
        assert entry is not None
        try:
            os.fchmod(fd, entry.mode)  # the umask must not decide
            if entry.mtime_ns is not None:
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        except OSError as exc:
            raise install_error(exc, entry.path) from exc
        self._file = None
        self.files += 1
        self._unsynced_bytes += self._copied
        if len(self._unsynced) >= _FSYNC_BATCH_FILES or self._unsynced_bytes >= _FSYNC_BATCH_BYTES:
            self._sync_files()

    def finish(self) -> None:
        """Make everything written durable."""
        while self._chain_fds:
            self._leave_directory()
        self._sync_files()
        try:
            self._syncer.finish()
        except OSError as exc:
            raise install_error(exc, "files") from exc
        try:
            os.fsync(self._root_fd)
        except OSError as exc:
            raise install_error(exc, ".") from exc

    def close(self) -> None:
        """Close every descriptor still open, without syncing (after an error)."""
        self._syncer.close()
        while self._unsynced:
            with suppress(OSError):
                os.close(self._unsynced.pop())
        while self._chain_fds:
            self._chain_names.pop()
            with suppress(OSError):
                os.close(self._chain_fds.pop())

    def _enter(self, parts: tuple[str, ...], entry: Entry) -> int:
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
        self, parent_fd: int, parts: tuple[str, ...], entry: Entry, *, listed: bool
    ) -> None:
        """Create (or reopen) directory ``parts`` and push it on the open chain."""
        name, path = parts[-1], "/".join(parts)
        created = True
        try:
            os.mkdir(name, _DIR_MODE, dir_fd=parent_fd)
        except FileExistsError:
            created = False
        except OSError as exc:
            raise install_error(exc, path) from exc
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise self._clash(parent_fd, parts, entry) from exc
            raise install_error(exc, path) from exc
        self._chain_names.append(name)
        self._chain_fds.append(fd)
        if created:
            try:
                os.fchmod(fd, _DIR_MODE)  # the umask must not decide
            except OSError as exc:
                raise install_error(exc, path) from exc
            self.directories += 1
            if not listed:
                self._implicit.add(parts)
        elif listed:
            if parts not in self._implicit:
                raise refused(entry.member, f"the directory {path!r} appears twice")
            self._implicit.discard(parts)

    def _clash(self, parent_fd: int, parts: tuple[str, ...], entry: Entry) -> SysupdError:
        """Explain why ``parts`` could not be created or entered as ``entry`` needs."""
        path = "/".join(parts)
        try:
            found = os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False).st_mode
        except OSError as exc:
            return install_error(exc, path)
        if parts != entry.parts:
            if stat.S_ISREG(found):
                return refused(entry.member, f"it lies under {path!r}, which is a file")
        elif stat.S_ISREG(found):
            if entry.is_dir:
                return refused(entry.member, f"it is a directory where the file {path!r} is")
            return refused(entry.member, f"the file {path!r} appears twice")
        elif stat.S_ISDIR(found) and not entry.is_dir:
            return refused(entry.member, f"it is a file where the directory {path!r} is")
        return InstallError(f"the slot changed during extraction: {path!r} was replaced")

    def _leave_directory(self) -> None:
        """Close the chain's last directory: its fsync goes with the next batch of files (no
        file is being written when the chain moves, so a full batch can go now)."""
        self._chain_names.pop()
        self._unsynced.append(self._chain_fds.pop())
        if len(self._unsynced) >= _FSYNC_BATCH_FILES:
            self._sync_files()

    def _sync_files(self) -> None:
        """Hand the written files to the syncer (once it is done with the batch before)."""
        if not self._unsynced:
            return
        try:
            self._syncer.submit(self._unsynced)
        except OSError as exc:
            raise install_error(exc, "files") from exc
        self._unsynced, self._unsynced_bytes = [], 0  # the syncer closes them now


_Job = tuple[Callable[..., None], tuple[object, ...]]


class ThreadedTreeWriter:
    """A ``_TreeWriter`` on a worker thread: the caller queues operations and data, in order.

    ``buffer(wanted)`` lends a data buffer (waiting while all of its size are in flight): one of
    ``_QUEUED_SMALL`` small ones for the rest of a file that fits, else one of
    ``_QUEUED_BUFFERS`` of ``DATA_BYTES``; the caller fills it and passes a slice of it to
    ``write``, which gives it back once written. Why so many: each file takes a buffer of its
    own, however small, so the pool bounds how many files the extracting thread runs ahead; with
    three it was three, and on a tree of 35,000 files the two threads waited for each other (the
    writer idle 1.5-1.9 s of an 11 s install); with eight, the writer was still idle half of a
    tree delta install while the extracting thread waited for buffers the other half (py-spy);
    with 64 small ones beside (4 MiB) the writer no longer waits for work.
    An error of the writer is raised by the caller's next call (or ``finish``); after it the
    worker only gives buffers back.
    """

    def __init__(self, root_fd: int) -> None:
        self._writer = _TreeWriter(root_fd)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._free: dict[int, queue.SimpleQueue[memoryview]] = {}  # by buffer size
        for size, count in ((DATA_BYTES, _QUEUED_BUFFERS), (SMALL_BYTES, _QUEUED_SMALL)):
            self._free[size] = queue.SimpleQueue()
            for _ in range(count):
                self._free[size].put(memoryview(bytearray(size)))
        self._failed: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="sysupd-tree-writer", daemon=True)
        self._thread.start()

    @property
    def files(self) -> int:
        return self._writer.files

    @property
    def directories(self) -> int:
        return self._writer.directories

    def add_directory(self, entry: Entry) -> None:
        self._queue(self._writer.add_directory, entry)

    def begin_file(self, entry: Entry) -> None:
        self._queue(self._writer.begin_file, entry)

    def buffer(self, wanted: int) -> memoryview:
        """A free data buffer for ``wanted`` more bytes of the file (waits for one): a small
        one if they fit, else one of ``DATA_BYTES``."""
        self._raise_failure()
        return self._free[SMALL_BYTES if wanted <= SMALL_BYTES else DATA_BYTES].get()

    def write(self, data: memoryview) -> None:
        """Write ``data`` (a slice of a buffer from ``buffer()``), then give the buffer back."""
        self._queue(self._write, data)

    def end_file(self) -> None:
        self._queue(self._writer.end_file)

    def finish(self) -> None:
        """Wait for every operation, then make everything durable; raises what failed."""
        self._queue(self._writer.finish)
        self._stop()
        self._raise_failure()

    def close(self) -> None:
        """Stop after the operation at hand (skipping the rest) and close every descriptor."""
        self._abandoned = True
        self._stop()
        self._writer.close()

    def _queue(self, operation: Callable[..., None], *args: object) -> None:
        self._raise_failure()
        self._jobs.put((operation, args))

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _write(self, data: memoryview) -> None:
        try:
            self._writer.write(data)
        finally:
            self._give_back(data)

    def _give_back(self, data: memoryview) -> None:
        whole = data.obj
        assert isinstance(whole, bytearray)
        self._free[len(whole)].put(memoryview(whole))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            operation, args = job
            if self._failed is not None or self._abandoned:
                if operation == self._write:
                    self._give_back(args[0])  # type: ignore[arg-type]
                continue
            try:
                operation(*args)
            except BaseException as exc:  # noqa: BLE001 - raised in the extracting thread
                self._failed = exc
