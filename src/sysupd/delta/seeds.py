"""Seeds: what the device holds already that a release's chunks may be copied from.

A seed is a plain payload form on the device: a raw slot's image (a block device or file, read
only), or a directory slot's tree laid out as its release tar (``TreeTar``). ``find_chunks`` cuts
each seed with the release's own chunker and notes where each chunk of the index lies, so that
chunk can be copied instead of fetched.

Invariants: seeds are only read, never written, and never trusted: a chunk found here is read
again and checked against its signed hash when it is copied (``Seed.read_into`` fills the
caller's buffer, the caller hashes it). A seed that cannot be read is left out with a line in the
log, never an error: its chunks are fetched instead. Memory is the cutter's window and one
location per chunk of the index found.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sysupd.core.cdc import StreamCutter
from sysupd.core.chunkindex import ChunkIndex
from sysupd.delta.treestream import TreeTar, read_full

__all__ = ["Found", "ImageSeed", "Log", "Seed", "TreeSeed", "find_chunks"]

Log = Callable[[str], None]
"""A line for people, for the update's log."""

_READ_BYTES = 1 << 20
_HASHING_AHEAD = 4  # pieces cut and waiting for their hashes, at most


class Seed(Protocol):
    """A plain payload form the device holds."""

    name: str
    """For people: "slot A (booted)"."""
    layout: ChunkIndex | None
    """The chunk index of the release the seed holds, if the device kept it: then its chunks
    are known without cutting it (and still hashed when copied)."""

    def stream(self) -> Iterator[bytes]:
        """Its bytes from the start, in pieces.

        Raises:
            OSError: it cannot be read.
        """
        ...

    def read_into(self, offset: int, out: memoryview) -> int:
        """Fill ``out`` with its bytes from ``offset``; how many (fewer only at its end).

        Raises:
            OSError: it cannot be read.
        """
        ...

    def close(self) -> None:
        """Release what it holds open."""
        ...


class ImageSeed:
    """A raw slot, read as an image of at most ``limit`` bytes."""

    def __init__(self, name: str, path: Path, limit: int, layout: ChunkIndex | None = None) -> None:
        self.name = name
        self.layout = layout
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            mode = os.fstat(self._fd).st_mode
            if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
                raise OSError(f"{path} is not a block device or file")
            size = os.lseek(self._fd, 0, os.SEEK_END)
        except BaseException:
            os.close(self._fd)
            raise
        self.length = min(size, limit)

    def stream(self) -> Iterator[bytes]:
        done = 0
        while done < self.length:
            data = os.pread(self._fd, min(_READ_BYTES, self.length - done), done)
            if not data:
                return
            yield data
            done += len(data)

    def read_into(self, offset: int, out: memoryview) -> int:
        return read_full(self._fd, out[: max(0, self.length - offset)], offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class TreeSeed:
    """A directory slot, read as the release tar of its tree."""

    def __init__(self, name: str, root: Path, layout: ChunkIndex | None = None) -> None:
        self.name = name
        self.layout = layout
        self._tar = TreeTar(root)
        self.length = self._tar.length

    def stream(self) -> Iterator[bytes]:
        return self._tar.stream()

    def read_into(self, offset: int, out: memoryview) -> int:
        out = out[: max(0, self.length - offset)]
        if out:
            self._tar.read_into(offset, out)
        return len(out)

    def close(self) -> None:
        self._tar.close()


@dataclass(frozen=True, slots=True)
class Found:
    """Where a chunk of the index lies in a seed."""

    seed: Seed
    offset: int


Use = Callable[[bytes, bytes | memoryview], None]
"""Called with a wanted chunk's digest and its bytes (just hashed: they match) as a scan finds
it, the first time each digest is found."""


def find_chunks(
    index: ChunkIndex, seeds: list[Seed], wanted: set[bytes], log: Log, use: Use | None = None
) -> dict[bytes, Found]:
    """Where the chunks ``wanted`` (digests of the index's chunks) lie in ``seeds``: read from a
    seed's layout when it has one, else by cutting it with the index's chunker and hashing every
    chunk; the first place found is kept. A seed that is cut hands each chunk found to ``use``
    too, so a caller can write it at once instead of reading it again."""
    found: dict[bytes, Found] = {}
    for seed in seeds:
        if len(found) == len(wanted):
            break
        before = len(found)
        if seed.layout is not None and seed.layout.params == index.params:
            started = time.monotonic()
            try:
                _by_layout(seed, seed.layout, wanted, found, use)
            except OSError as exc:
                log(f"{seed.name} cannot be read as a seed ({exc}); its chunks are fetched")
                continue
            log(
                f"{seed.name}: {len(found) - before} of the release's chunks there, by the "
                f"index of the release it holds ({time.monotonic() - started:.2f} s)"
            )
            continue
        started = time.monotonic()
        try:
            _scan(index, seed, wanted, found, use)
        except OSError as exc:
            log(f"{seed.name} cannot be read as a seed ({exc}); its chunks are fetched instead")
            continue
        log(
            f"{seed.name}: {len(found) - before} of the release's chunks found there (cut and "
            f"hashed in {time.monotonic() - started:.2f} s)"
        )
    return found


def _scan(
    index: ChunkIndex,
    seed: Seed,
    wanted: set[bytes],
    found: dict[bytes, Found],
    use: Use | None,
) -> None:
    """Cut ``seed`` and note where the ``wanted`` chunks lie. The chunks of each piece read are
    hashed on a worker thread while the next piece is read and cut (hashlib lets go of the GIL;
    the cutter does not), at most ``_HASHING_AHEAD`` pieces behind."""
    cutter = StreamCutter(index.params)
    pending: deque[tuple[int, list[bytes], Future[list[bytes]]]] = deque()

    def settle(limit: int) -> None:
        while len(pending) > limit:
            start, chunks, hashed = pending.popleft()
            for chunk, digest in zip(chunks, hashed.result(), strict=True):
                if digest in wanted and digest not in found:
                    found[digest] = Found(seed, start)
                    if use is not None:
                        use(digest, chunk)
                start += len(chunk)

    with ThreadPoolExecutor(1, thread_name_prefix="sysupd-seed-hash") as pool:
        pieces = seed.stream()
        while True:
            piece = next(pieces, None)
            start = cutter.offset
            chunks = list(cutter.feed(piece) if piece is not None else cutter.finish())
            if chunks:
                pending.append((start, chunks, pool.submit(_digests, chunks)))
                settle(_HASHING_AHEAD)
            if piece is None:
                break
        settle(0)


def _by_layout(
    seed: Seed,
    layout: ChunkIndex,
    wanted: set[bytes],
    found: dict[bytes, Found],
    use: Use | None,
) -> None:
    """Note where the ``wanted`` chunks lie by the seed's own index; with ``use``, read each
    (runs that lie end to end with one call), hash it on a worker thread, and hand over those
    that match — a chunk whose bytes do not is simply not found."""
    places: list[tuple[int, int, bytes]] = []  # offset, length, digest: the wanted ones
    for number in range(layout.count):
        digest = layout.digest(number)
        if digest in wanted and digest not in found:
            offset, length = layout.span(number)
            if use is None:
                found[digest] = Found(seed, offset)
            else:
                places.append((offset, length, digest))
    if use is None:
        return
    pending: deque[tuple[list[tuple[int, int, bytes]], Future[_Read]]] = deque()

    def settle(limit: int) -> None:
        while len(pending) > limit:
            run, read = pending.popleft()
            chunks, digests = read.result()
            for (offset, _, want), chunk, digest in zip(run, chunks, digests, strict=True):
                if digest == want and digest not in found:
                    found[digest] = Found(seed, offset)
                    use(digest, chunk)

    # The worker reads each run and hashes its chunks while this thread writes the last ones:
    # the seed's reads and hashes run beside the writes, not between them.
    with ThreadPoolExecutor(1, thread_name_prefix="sysupd-seed-read") as pool:
        at = 0
        while at < len(places):
            run = [places[at]]
            while (
                at + len(run) < len(places)
                and places[at + len(run)][0] == run[-1][0] + run[-1][1]
                and run[-1][0] + run[-1][1] - run[0][0] < _READ_BYTES
            ):
                run.append(places[at + len(run)])
            at += len(run)
            pending.append((run, pool.submit(_read_run, seed, run)))
            settle(_HASHING_AHEAD)
        settle(0)


_Read = tuple[list[memoryview], list[bytes]]


def _read_run(seed: Seed, run: list[tuple[int, int, bytes]]) -> _Read:
    """The chunks of ``run`` (offset, length, digest: end to end in ``seed``), read with one
    call, as views of the bytes read (not copies), and their SHA-256 digests."""
    start = run[0][0]
    data = memoryview(bytearray(run[-1][0] + run[-1][1] - start))
    data = data[: seed.read_into(start, data)]
    chunks = [data[offset - start : offset - start + length] for offset, length, _ in run]
    return chunks, _digests(chunks)


def _digests(chunks: list[bytes] | list[memoryview]) -> list[bytes]:
    return [hashlib.sha256(chunk).digest() for chunk in chunks]
