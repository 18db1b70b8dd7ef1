"""A delta install: the release's plain payload written from the chunks the device holds, the
missing ones fetched, every chunk checked against the signed chunk index before it is used.

A raw slot (``write_raw``, through ``RawPatch``), in three steps:

1. The slot is read chunk by chunk: a chunk it holds at its place already (the release before
   last shares many blocks; an install cut short by a restart holds all it wrote) is kept and not
   written at all. That is what makes an interrupted update resume.
2. The seeds (the booted slot) are cut with the index's chunker, or read by the index kept from
   their own install; each chunk found, hashed as it was read, is written at once at every place
   the image has it, so no seed byte is read twice.
3. The chunks found nowhere are fetched (``ChunkFetcher``, several at a time) and written at
   their places; repeats of a kept chunk are copied within the slot, hashed again when read.

A directory slot (``stream``) takes the plain tar in order as a stream (``AssembledStream``)
through its usual allow-list extractor: seed chunks are read and hashed ahead of it
(``SeedCopier``) and missing ones fetched ahead of it; any other writer takes the stream too.

Invariants: no byte reaches a slot, or a parser, before the chunk it belongs to matched its
signed SHA-256 (a seed chunk that does not is fetched instead); memory is bounded by the windows
of the fetcher and the copier and by the plan, some hundred bytes a chunk of the index (a few MiB
a GiB); the tally says where every byte came from: kept in place, copied from the device, or
fetched from the network.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sysupd.core.chunkindex import ChunkIndex
from sysupd.delta.copier import SeedCopier
from sysupd.delta.fetch import ChunkFetcher, ChunkSource, DeltaOptions
from sysupd.delta.seeds import Found, Log, Seed, Use, find_chunks
from sysupd.errors import VerificationError
from sysupd.slots.base import ReadStream
from sysupd.slots.rawpatch import RawPatch

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["AssembledStream", "DeltaInstall", "DeltaTally"]


@dataclass(slots=True)
class DeltaTally:
    """Where the payload's bytes came from."""

    total: int
    in_place: int = 0
    """Bytes the slot held at their place already (not written)."""
    copied: int = 0
    """Bytes copied from a seed on the device."""
    fetched: int = 0
    """Payload bytes fetched from the network."""
    downloaded: int = 0
    """Bytes downloaded for them (compressed)."""
    chunks_fetched: int = 0

    @property
    def from_device(self) -> int:
        """Payload bytes that came from the device."""
        return self.in_place + self.copied

    @property
    def done(self) -> int:
        """Payload bytes written or kept so far."""
        return self.in_place + self.copied + self.fetched


Report = Callable[[DeltaTally], None]


class DeltaInstall:
    """One delta install of the payload ``index`` describes."""

    def __init__(
        self,
        index: ChunkIndex,
        chunks: ChunkSource,
        seeds: list[Seed],
        options: DeltaOptions,
        log: Log,
        report: Report,
    ) -> None:
        self._index = index
        self._chunks = chunks
        self._seeds = seeds
        self._options = options
        self._log = log
        self._report = report
        self.tally = DeltaTally(index.length)

    # -- a raw slot, written in place ----------------------------------------------------------

    def write_raw(self, patch: RawPatch) -> None:
        """Write the image into ``patch``'s slot, keeping what it holds at its place.

        One pass over the seeds: each chunk a seed yields, just hashed, is written at once at
        every place the image has it (so it is never read twice); then the chunks found nowhere
        are fetched, and repeats of chunks the slot kept are copied within the slot.

        Raises:
            AcquireError, VerificationError: chunks could not be fetched, or not as signed.
            InstallError: the slot could not be read or written.
        """
        index = self._index
        kept = self._held_in_place(patch)
        if kept.count(1):
            self._log(
                f"slot {patch.name} holds {_mib(self._bytes(kept))} of the release at its place "
                "already (kept, not written)"
            )
        writer = _PlacedWriter(index, patch, kept, self.tally, self._report)
        in_slot = {index.digest(n): index.entry(n).offset for n in range(index.count) if kept[n]}
        places: dict[bytes, list[int]] = {}
        for number in range(index.count):
            if not kept[number]:
                places.setdefault(index.digest(number), []).append(number)

        def use(digest: bytes, data: bytes) -> None:
            writer.put(places[digest], data, copied=True)

        found = self._find(places.keys() - in_slot.keys(), use)
        fetch = [
            numbers[0]
            for digest, numbers in places.items()
            if digest not in found and digest not in in_slot
        ]
        fetch.sort()
        fetcher = self._fetcher(fetch, found)
        try:
            for number in fetch:
                data = fetcher.take(number)
                writer.put(places[index.digest(number)], data, copied=False)
            for digest, offset in in_slot.items():  # repeats of a kept chunk, within the slot
                numbers = places.get(digest)
                if not numbers:
                    continue
                copy = _checked(patch.read_at(offset, index.entry(numbers[0]).length), digest)
                if copy is None:
                    refetched = self._refetch(numbers[0], fetcher, f"slot {patch.name}")
                    writer.put(numbers, refetched, copied=False)
                else:
                    writer.put(numbers, copy, copied=True)
        finally:
            fetcher.close()
            self._count_fetches(fetcher)
        writer.check_complete()
        started = time.monotonic()
        patch.finish()
        self._log(
            f"slot {patch.name} made durable and read back whole in "
            f"{time.monotonic() - started:.2f} s after its last write"
        )

    def _held_in_place(self, patch: RawPatch) -> bytearray:
        """1 for each chunk the slot holds at its place, hashed from what it reads now."""
        index = self._index
        kept = bytearray(index.count)
        for number in range(index.count):
            entry = index.entry(number)
            if entry.offset + entry.length > patch.held:
                break
            data = patch.read_at(entry.offset, entry.length)
            if _checked(data, entry.digest) is not None:
                kept[number] = 1
        return kept

    def _bytes(self, kept: bytearray) -> int:
        return sum(self._index.entry(n).length for n in range(self._index.count) if kept[n])

    # -- any other slot, as a stream -----------------------------------------------------------

    def stream(self) -> AssembledStream:
        """The plain payload as a stream of checked bytes, for a writer that reads one."""
        index = self._index
        found = self._find({index.digest(n) for n in range(index.count)})
        fetch = [n for n in range(index.count) if index.digest(n) not in found]
        return AssembledStream(self._pieces(found, fetch))

    def _pieces(self, found: dict[bytes, Found], fetch: list[int]) -> Iterator[bytes]:
        index = self._index
        fetcher = self._fetcher(fetch, found)
        copies = [
            (n, found[index.digest(n)]) for n in range(index.count) if index.digest(n) in found
        ]
        copier = SeedCopier(index, copies)
        try:
            for number in range(index.count):
                data = self._local_or_fetched(number, found, fetcher, copier)
                self._report(self.tally)
                yield data
        finally:
            copier.close()
            fetcher.close()
            self._count_fetches(fetcher)

    # -- shared ----------------------------------------------------------------------------------

    def _find(self, wanted: set[bytes], use: Use | None = None) -> dict[bytes, Found]:
        if not wanted or not self._seeds:
            return {}
        return find_chunks(self._index, self._seeds, wanted, self._log, use)

    def _fetcher(self, fetch: list[int], found: dict[bytes, Found]) -> ChunkFetcher:
        index = self._index
        size = index.stored_bytes(fetch)
        plain = sum(index.entry(n).length for n in fetch)
        self._log(
            f"{_mib(index.length)} payload in {index.count} chunks: {len(found)} distinct chunks "
            f"found on the device, {len(fetch)} to fetch ({_mib(plain)}, {_mib(size)} to "
            f"download from {self._chunks.where})"
        )
        options = self._options
        return ChunkFetcher(
            index,
            self._chunks,
            fetch,
            parallel=options.parallel,
            deadline_s=options.deadline_s,
            max_rate_bps=options.max_rate_bps,
        )

    def _local_or_fetched(
        self,
        number: int,
        found: dict[bytes, Found],
        fetcher: ChunkFetcher,
        copier: SeedCopier,
    ) -> bytes:
        """Chunk ``number``'s checked bytes: copied from a seed if the plan found it in one,
        else the fetcher's next."""
        entry = self._index.entry(number)
        place = found.get(entry.digest)
        if place is None:
            fetched = fetcher.take(number)
            self.tally.fetched += entry.length
            return fetched
        data = copier.take(number)
        if data is None:
            data = self._refetch(number, fetcher, place.seed.name)
            self.tally.fetched += entry.length
            return data
        self.tally.copied += entry.length
        return data

    def _refetch(self, number: int, fetcher: ChunkFetcher, where: str) -> bytes:
        """Chunk ``number`` fetched now: its copy in ``where`` did not match its hash."""
        self._log(f"chunk {number} in {where} does not match its hash: fetching it instead")
        return fetcher.fetch_now(number)

    def _count_fetches(self, fetcher: ChunkFetcher) -> None:
        self.tally.downloaded = fetcher.tally.stored_bytes
        self.tally.chunks_fetched = fetcher.tally.chunks
        if fetcher.tally.refetched:
            self._log(
                f"{fetcher.tally.refetched} chunks did not match their hash and were fetched again"
            )


class _PlacedWriter:
    """Writes checked chunks at every place the image has them, in any order (the slot reads
    each back in its turn)."""

    def __init__(
        self,
        index: ChunkIndex,
        patch: RawPatch,
        kept: bytearray,
        tally: DeltaTally,
        report: Report,
    ) -> None:
        self._index = index
        self._patch = patch
        self._done = bytearray(kept)
        self._tally = tally
        self._report = report
        for number in range(index.count):
            if kept[number]:
                entry = index.entry(number)
                tally.in_place += entry.length
                patch.keep(entry.offset, entry.length, entry.digest)

    def put(self, numbers: list[int], data: bytes, *, copied: bool) -> None:
        """Write ``data`` (checked) at the places of chunks ``numbers``, counted as copied from
        the device or fetched from the network."""
        for number in numbers:
            if self._done[number]:
                continue
            entry = self._index.entry(number)
            self._patch.write_at(entry.offset, data, entry.digest)
            self._done[number] = 1
            if copied:
                self._tally.copied += entry.length
            else:
                self._tally.fetched += entry.length
        self._report(self._tally)

    def check_complete(self) -> None:
        """Every chunk is in place.

        Raises:
            VerificationError: one is not (the plan missed it: a bug, refused loudly).
        """
        missing = self._done.find(0)
        if missing >= 0:
            raise VerificationError(f"chunk {missing} of the image was never written")


class AssembledStream(ReadStream):
    """A read-only stream of checked chunks, in order."""

    stream_name = "<assembled payload>"

    def __init__(self, pieces: Iterator[bytes]) -> None:
        super().__init__()
        self._pieces = pieces
        self._buffer = memoryview(b"")

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Fill ``buffer`` with the next checked bytes; 0 at the end."""
        if not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buffer = memoryview(piece)
        with memoryview(buffer) as target, target.cast("B") as out:
            count = min(len(out), len(self._buffer))
            out[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def close(self) -> None:
        """Stop the fetching behind it."""
        if not self.closed:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()
        super().close()


def _checked(data: bytes, digest: bytes) -> bytes | None:
    """``data`` if its SHA-256 is ``digest``."""
    return data if hmac.compare_digest(hashlib.sha256(data).digest(), digest) else None


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
