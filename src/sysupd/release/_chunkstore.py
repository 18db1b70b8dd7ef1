"""The repository's chunk store, and cutting a payload into it while the payload is made.

Layout: ``DIR/targets/chunks/ab/abcd….zst``, one file per distinct chunk, named by the SHA-256 of
its plain bytes (``core.chunkindex.store_path``) and holding one zstd frame of them. A static
server or CDN serves the files as they are, and may cache them forever: a name never changes
its content. Chunks are shared by every release (and every product) of the store.

``ChunkCutter`` is the payload packer's tap: it is fed the payload's plain form as it is made,
cuts it into content-defined chunks, compresses the new ones on a few threads and stores them,
and at the end returns the chunk index. A chunk already in the store is checked (its frame must
decompress to bytes with its name's hash) and reused, or replaced when it is damaged.

Invariants: memory is bounded by the chunks in flight (``_IN_FLIGHT`` per thread) and the index
entries (56 bytes a chunk); a chunk file is written to a temp file and renamed into place, and
every file written is fsynced, with its directory, before ``finish`` returns — so an index is
only ever signed once the chunks it names are durable. A crash in between leaves at most a
chunk that fails its check, which the next release replaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import zstandard

from sysupd.core.cdc import StreamCutter
from sysupd.core.chunkindex import (
    ChunkerParams,
    encode_index,
    store_path,
    stored_bound,
    stored_digest,
)
from sysupd.errors import StateError

__all__ = ["CHUNK_ZSTD_LEVEL", "ChunkCutter", "chunk_store"]

CHUNK_ZSTD_LEVEL = 12  # chunks are small and compressed once per store: worth a higher level
_IN_FLIGHT = 4

_Entry = tuple[bytes, bytes, int, int]


def chunk_store(repo_dir: Path) -> Path:
    """The chunk store of the repository in ``repo_dir``."""
    return repo_dir / "targets" / "chunks"


class ChunkCutter:
    """Cuts a payload's plain form into the chunk store; ``finish`` returns its index."""

    def __init__(
        self,
        store: Path,
        params: ChunkerParams,
        threads: int | None = None,
        *,
        hash_whole: bool = True,
    ) -> None:
        """``hash_whole`` off: the caller hashes the same bytes already (a raw image is its
        own plain form) and hands the SHA-256 to ``finish``."""
        self._store = store
        self._cutter = StreamCutter(params)
        self._params = params
        self._whole = hashlib.sha256() if hash_whole else None
        self._length = 0
        workers = threads or max(1, min(8, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sysupd-chunks")
        self._limit = workers * _IN_FLIGHT
        self._pending: deque[Future[_Entry]] = deque()
        self._known: dict[bytes, Future[_Entry]] = {}
        self._entries: list[_Entry] = []
        self._written: list[Path] = []
        self.new_chunks = 0
        self.new_bytes = 0

    def __call__(self, data: bytes) -> None:
        """The next piece of the plain payload."""
        if self._whole is not None:
            self._whole.update(data)
        self._length += len(data)
        for chunk in self._cutter.feed(data):
            self._add(chunk)

    def finish(self, sha256: str | None = None) -> bytes:
        """Store the last chunks, make them durable and return the payload's chunk index
        (``sha256``: the plain form's, when this cutter does not hash it).

        Raises:
            StateError: a chunk could not be read or written.
        """
        try:
            for chunk in self._cutter.finish():
                self._add(chunk)
            while self._pending:
                self._collect()
            self._sync()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        whole = self._whole.hexdigest() if self._whole is not None else sha256
        if whole is None:
            raise ValueError("the plain form's SHA-256 is neither hashed here nor given")
        return encode_index(self._length, whole, self._params, self._entries)

    def close(self) -> None:
        """Stop the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def abandon(self) -> None:
        """After a failure: stop, and remove the chunks this cut stored (no index names them;
        the repository's lock keeps another release from sharing them meanwhile)."""
        self.close()
        for path in self._written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _add(self, chunk: bytes) -> None:
        digest = hashlib.sha256(chunk).digest()
        known = self._known.get(digest)
        if known is None:
            known = self._pool.submit(self._store_chunk, chunk, digest)
            self._known[digest] = known
        self._pending.append(known)
        while len(self._pending) > self._limit:
            self._collect()

    def _collect(self) -> None:
        self._entries.append(self._pending.popleft().result())

    def _store_chunk(self, chunk: bytes, digest: bytes) -> _Entry:
        """Store ``chunk`` unless the store holds it intact already; its index entry."""
        path = self._store / store_path(digest).removeprefix("chunks/")
        existing = _read_intact(path, digest, len(chunk))
        if existing is not None:
            return digest, stored_digest(existing), len(chunk), len(existing)
        frame = zstandard.ZstdCompressor(level=CHUNK_ZSTD_LEVEL).compress(chunk)
        if len(frame) > stored_bound(len(chunk)):  # cannot happen with zstd; a device refuses it
            raise StateError(f"chunk {digest.hex()} compressed to more than its bound")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(frame)
                os.chmod(temp, 0o644)
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
        except OSError as exc:
            raise StateError(f"cannot store chunk {digest.hex()} in {self._store}: {exc}") from exc
        self._written.append(path)  # list.append is atomic: threads add to it safely
        self.new_chunks += 1
        self.new_bytes += len(frame)
        return digest, stored_digest(frame), len(chunk), len(frame)

    def _sync(self) -> None:
        """fsync every chunk written and its directory (the pages are mostly written back by
        now, so this is quick; one fsync per file as it is written would be far slower)."""
        directories = {path.parent for path in self._written}
        try:
            for path in self._written:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for directory in {*directories, *(d.parent for d in directories)}:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StateError(f"cannot make the chunks in {self._store} durable: {exc}") from exc


def _read_intact(path: Path, digest: bytes, length: int) -> bytes | None:
    """The stored frame at ``path`` if it decompresses to ``length`` bytes hashing to
    ``digest``; ``None`` if it is missing or damaged (then it is written again)."""
    try:
        frame = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the stored chunk {path}: {exc.strerror}") from exc
    if len(frame) > stored_bound(length):
        return None
    try:
        plain = zstandard.ZstdDecompressor().decompress(frame, max_output_size=length)
    except zstandard.ZstdError:
        return None
    if len(plain) != length or hashlib.sha256(plain).digest() != digest:
        return None
    return frame
