"""The release repository's target files on disk, and the streamed files the release tool writes.

Invariants:

- A target file is stored under its consistent-snapshot name,
  ``DIR/targets/<directory>/<sha256>.<name>``, and never rewritten: a new content is a new name.
- Every file is written to a temp file in its own directory, fsynced, made 0644 and only then
  moved to its name with ``os.replace``; on any failure the temp file is removed and nothing
  at the name changed.
- A target's bytes are checked against their signed length and SHA-256 whenever they are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import TargetFile

from sysupd.errors import StateError
from sysupd.release import keys
from sysupd.release.payloads import COPY_BLOCK_BYTES, PayloadDigest

__all__ = [
    "copy_hashing",
    "read_target",
    "store_payload",
    "store_target_bytes",
    "target_path",
    "write_streamed",
]

_T = TypeVar("_T")


def target_path(repo_dir: Path, target: TargetFile) -> Path:
    """Where ``target`` is stored: its consistent-snapshot name."""
    directory, _, name = target.path.rpartition("/")
    return repo_dir / "targets" / directory / f"{target.hashes['sha256']}.{name}"


def store_target_bytes(repo_dir: Path, target: TargetFile, data: bytes) -> None:
    """Store ``data`` as the target ``target`` describes.

    Raises:
        StateError: the file could not be written.
    """
    keys.write_file_atomically(target_path(repo_dir, target), data)


def read_target(repo_dir: Path, target: TargetFile) -> bytes:
    """The stored bytes of ``target``, checked against its signed length and hash.

    Raises:
        StateError: the file cannot be read or does not match.
    """
    path = target_path(repo_dir, target)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        target.verify_length_and_hashes(data)
    except LengthOrHashMismatchError as exc:
        raise StateError(f"{path} does not match its signed length and hash") from exc
    return data


def store_payload(
    directory: Path, name: str, produce: Callable[[BinaryIO], PayloadDigest]
) -> PayloadDigest:
    """Run ``produce`` into a temp file in ``directory``, then move it to its
    consistent-snapshot name ``<sha256>.<name>`` there; return its digest.

    Raises:
        StateError: the file could not be written.
    """
    try:
        return write_streamed(
            directory, name, produce, lambda digest: directory / f"{digest.sha256}.{name}"
        )
    except OSError as exc:
        raise StateError(f"cannot write the payload {name} in {directory}: {exc}") from exc


def write_streamed(
    directory: Path, name: str, write: Callable[[BinaryIO], _T], place: Callable[[_T], Path]
) -> _T:
    """Run ``write`` into a new temp file in ``directory`` (named after ``name``), then move the
    complete file to ``place(result)``; return what ``write`` returned.

    Raises:
        OSError: the file could not be written or moved (the temp file is then gone); whatever
            ``write`` raises, likewise.
    """
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    done = False
    try:
        with os.fdopen(fd, "wb") as handle:
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, place(result))
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
    return result


def copy_hashing(source: Path, out: BinaryIO) -> tuple[int, str]:
    """Copy ``source`` to ``out`` block by block; return its length and SHA-256.

    Raises:
        StateError: ``source`` cannot be opened.
        OSError: reading or writing failed later.
    """
    digest = hashlib.sha256()
    length = 0
    try:
        handle = source.open("rb")
    except OSError as exc:
        raise StateError(f"cannot read the payload {source}: {exc.strerror}") from exc
    with handle:
        while block := handle.read(COPY_BLOCK_BYTES):
            digest.update(block)
            length += len(block)
            out.write(block)
    return length, digest.hexdigest()
