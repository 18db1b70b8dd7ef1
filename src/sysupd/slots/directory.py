"""A slot that is a directory: tree payloads are extracted into it.

Responsibility: own one inactive slot directory (one of a pair, A and B): empty it, and fill it
from a verified tree payload through the allow-list extractor (``sysupd.slots.extract``).

Invariants:

- Only what lies inside the slot directory is ever removed or written. The directory itself must
  be a real directory (not a symbolic link); it is opened with ``O_NOFOLLOW`` and emptied relative
  to its descriptor, without following any link inside it.
- ``install`` starts from an empty directory and, on any failure, empties it again before the
  error propagates: a half-extracted tree never looks installed.
- A payload refused for its description (not a tree) changes nothing.
- The signed limits cap what is written: no more members than ``spec.entries``, no more file
  bytes than ``spec.installed_size``; the first member or byte beyond them is refused.
- A payload that can (``ReadAhead``, the engine's ``VerifiedReader``) is asked to verify one
  chunk ahead on its worker thread (one more chunk buffer), so hashing overlaps parsing and
  writing; it still hands out only checked bytes.
- For a delta install, ``stash`` moves what the slot holds into its seed directory beside it
  (``<slot>.delta-seed``, on the same filesystem, or nothing is moved), for the installer to copy
  chunks from; while a stash is in use, a failed install moves its partial tree there too instead
  of deleting it, so the next attempt resumes from it; ``drop_stash`` removes it after success.
  The slot itself is still empty before extraction and emptied after a failure.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from sysupd.errors import InstallError, SysupdError, VerificationError
from sysupd.slots.base import PayloadSpec, ProgressStream, ask_read_ahead, expect_end
from sysupd.slots.extract import MAX_MEMBERS, ExtractLimits, extract_tree

__all__ = ["DirectorySlot"]

_DIR_MODE = 0o755
_READ_AHEAD_CHUNKS = 1  # chunk hashing beside parsing and writing: one more chunk buffer
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DirectorySlot:
    """A slot directory that tree payloads are extracted into."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._stash: Path | None = None

    @property
    def stash_path(self) -> Path:
        """Where ``stash`` keeps what the slot held."""
        return self.path.with_name(f"{self.path.name}.delta-seed")

    def stash(self) -> tuple[Path, bool] | None:
        """Move the slot's entries into ``stash_path`` (an entry of the same name there is
        replaced); the stash and whether it held anything before. ``None`` when the slot cannot
        be stashed (its parent is another filesystem, read-only or not ours): then nothing
        moved. (The stash costs disk space beside the slot while it is in use: the old tree
        stays until the new one is in.)

        Raises:
            InstallError: the slot or the stash cannot be read or written.
        """
        fd = self._open_directory()
        stash = self.stash_path
        try:
            held = stash.is_dir() and any(stash.iterdir())
            stash.mkdir(mode=_DIR_MODE, exist_ok=True)
            seed_fd = os.open(stash, _DIR_FLAGS)
            try:
                with os.scandir(fd) as listing:
                    names = [entry.name for entry in listing]
                for entry_name in names:
                    self._replace_in_stash(fd, seed_fd, entry_name)
                os.fsync(seed_fd)
                os.fsync(fd)
            finally:
                os.close(seed_fd)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EROFS, errno.EACCES, errno.EPERM):
                return None  # no room beside the slot (a mount point, a read-only parent)
            raise InstallError(f"slot {self.name} could not be stashed: {exc}") from exc
        finally:
            os.close(fd)
        self._stash = stash
        return stash, held

    def drop_stash(self) -> None:
        """Remove the stash after a good install (best effort: the next stash replaces it)."""
        self._stash = None
        with suppress(OSError):
            shutil.rmtree(self.stash_path)

    @staticmethod
    def _replace_in_stash(slot_fd: int, seed_fd: int, name: str) -> None:
        try:
            details = os.stat(name, dir_fd=seed_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(details.st_mode):
                shutil.rmtree(name, dir_fd=seed_fd)
            else:
                os.unlink(name, dir_fd=seed_fd)
        os.rename(name, name, src_dir_fd=slot_fd, dst_dir_fd=seed_fd)

    def __repr__(self) -> str:
        return f"DirectorySlot({self.name!r}, {str(self.path)!r})"

    def install(
        self,
        payload: BinaryIO,
        spec: PayloadSpec,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Empty the slot and extract the tree payload into it; durable when this returns.

        Raises:
            VerificationError: the payload is not a tree, a member is not allowed, a limit from
                the signed metadata is exceeded, or the payload is not the signed one.
            InstallError: the slot could not be emptied or written (full disk, I/O error).
            AcquireError: the payload stream could not be read.
        """
        if spec.kind != "tree":
            raise VerificationError(
                f"a {spec.kind} payload cannot go into a directory slot ({self.name})"
            )
        if spec.entries is not None and spec.entries > MAX_MEMBERS:
            raise VerificationError(
                f"the release states {spec.entries} files and directories, more than the "
                f"{MAX_MEMBERS} a slot of this device takes"
            )
        self.wipe()
        ask_read_ahead(payload, _READ_AHEAD_CHUNKS)
        source = payload if progress is None else ProgressStream(payload, progress)
        try:
            extract_tree(
                source,
                self.path,
                # A tree's spec always states its count; none would admit no member at all.
                ExtractLimits(max_total_bytes=spec.installed_size, max_entries=spec.entries or 0),
                compression=spec.compression,
            )
            expect_end(source, "archive")
        except BaseException:
            self._wipe_after_failure()
            raise
        self.drop_stash()

    def wipe(self) -> None:
        """Remove everything inside the slot directory, creating it if it is missing.

        Raises:
            InstallError: the slot path is a symbolic link or not a directory, or something in
                it could not be removed.
        """
        fd = self._open_directory()
        try:
            with os.scandir(fd) as listing:
                entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
            for entry_name, is_dir in entries:
                if is_dir:
                    # fd-relative and link-safe on Linux (shutil.rmtree.avoids_symlink_attacks)
                    shutil.rmtree(entry_name, dir_fd=fd)
                else:
                    os.unlink(entry_name, dir_fd=fd)
            os.fsync(fd)
        except OSError as exc:
            raise InstallError(f"slot {self.name} could not be emptied: {exc}") from exc
        finally:
            os.close(fd)

    def _open_directory(self) -> int:
        """The slot directory's descriptor, opened without following a link; created if missing.

        Raises:
            InstallError: the path is a link or not a directory, or cannot be opened or created.
        """
        for attempt in range(2):
            try:
                return os.open(self.path, _DIR_FLAGS)
            except FileNotFoundError as exc:
                if attempt:
                    raise InstallError(
                        f"slot {self.name} vanished while it was created: {self.path}"
                    ) from exc
                try:
                    self.path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                except OSError as mkdir_exc:
                    raise InstallError(
                        f"slot {self.name} directory {self.path} cannot be created: {mkdir_exc}"
                    ) from mkdir_exc
            except OSError as exc:
                raise InstallError(self._unusable(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _unusable(self, exc: OSError) -> str:
        """Why the slot path cannot be opened as a directory."""
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                mode = os.lstat(self.path).st_mode
            except OSError:
                mode = 0
            if stat.S_ISLNK(mode):
                return f"slot {self.name} path {self.path} is a symbolic link, not a directory"
            if exc.errno == errno.ENOTDIR:
                return f"slot {self.name} path {self.path} is not a directory"
        return f"slot {self.name} directory {self.path} cannot be opened: {exc}"

    def _wipe_after_failure(self) -> None:
        """Empty the slot after a failed install (into the stash, if one is in use, for the
        next attempt to resume from); the install's own error is what matters."""
        # If this fails too, the next install wipes first; nothing switches to a failed slot.
        with suppress(SysupdError):
            if self._stash is not None and self.stash() is not None:
                return
        with suppress(SysupdError):
            self.wipe()
