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
   their places: beside step 2 when every seed has a kept index (what is missing is known before
   any seed is read), else after it; a chunk a kept index placed wrongly is fetched after step 2.
   Repeats of a kept chunk are copied within the slot, hashed again when read.

A directory slot (``stream``) takes the plain tar in order as a stream (``AssembledStream``)
through its usual allow-list extractor: seed chunks are read and hashed as it asks for them, a
run of them with one read (``SeedCopier``), and missing ones fetched ahead of it; any other
writer takes the stream too.

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
from array import array
from collections import deque
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
        self._fetch_deadline: float | None = None

    # -- a raw slot, written in place ----------------------------------------------------------

    def write_raw(self, patch: RawPatch) -> None:
        """Write the image into ``patch``'s slot, keeping what it holds at its place.

        One pass over the seeds: each chunk a seed yields, just hashed, is written at once at
        every place the image has it (so it is never read twice); the chunks found nowhere are
        fetched and written as they come — beside the seed pass when the seeds' kept indexes
        tell what is missing before any seed is read, else after it; then repeats of chunks the
        slot kept are copied within the slot.

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
        in_slot = {index.digest(n): index.span(n)[0] for n in range(index.count) if kept[n]}
        places: dict[bytes, list[int]] = {}
        for number in range(index.count):
            if not kept[number]:
                places.setdefault(index.digest(number), []).append(number)
        wanted = places.keys() - in_slot.keys()
        fetched = _Fetched(
            self._fetcher,
            lambda number, data: writer.put(places[index.digest(number)], data, copied=False),
        )

        def use(digest: bytes, data: bytes | memoryview) -> None:
            writer.put(places[digest], data, copied=True)
            fetched.write(wait=False)

        try:
            located = self._located(wanted)
            if located is not None:  # what is missing is known now: fetched beside the seeds
                ahead = sorted(places[digest][0] for digest in wanted - located)
                self._plan(len(located), ahead, "placed by the seeds' kept indexes")
                fetched.ask(ahead)
                wanted = located
            found = self._find(wanted, use)
            fetched.write(wait=True)
            rest = sorted(places[digest][0] for digest in wanted - found.keys())
            if located is None:
                self._plan(len(found), rest, "found")
            elif rest:
                self._log(
                    f"{len(rest)} chunks were not where the seeds' kept indexes put them: "
                    "fetching them too"
                )
            fetched.ask(rest)
            fetched.write(wait=True)
            for digest, offset in in_slot.items():  # repeats of a kept chunk, within the slot
                numbers = places.get(digest)
                if not numbers:
                    continue
                copy = _checked(patch.read_at(offset, index.entry(numbers[0]).length), digest)
                if copy is None:
                    refetched = self._refetch(numbers[0], fetched.last, f"slot {patch.name}")
                    writer.put(numbers, refetched, copied=False)
                else:
                    writer.put(numbers, copy, copied=True)
        finally:
            self._count_fetches(fetched.close())
        writer.check_complete()
        started = time.monotonic()
        patch.finish()
        self._log(
            f"slot {patch.name} made durable and read back whole in "
            f"{time.monotonic() - started:.2f} s after its last write"
        )

    def _located(self, wanted: set[bytes]) -> set[bytes] | None:
        """The ``wanted`` digests the seeds' kept indexes place, if there are seeds and every one
        has one (else ``None``: a seed must be cut before the missing chunks are known, or there
        is nothing to read beside the fetch)."""
        if not self._seeds:
            return None
        located: set[bytes] = set()
        for seed in self._seeds:
            layout = seed.layout
            if layout is None or layout.params != self._index.params:
                return None
            located.update(layout.digest(n) for n in range(layout.count))
        return located & wanted

    def _held_in_place(self, patch: RawPatch) -> bytearray:
        """1 for each chunk the slot holds at its place, hashed from what it reads now."""
        index = self._index
        kept = bytearray(index.count)
        for number in range(index.count):
            offset, length = index.span(number)
            if offset + length > patch.held:
                break
            if _checked(patch.read_at(offset, length), index.digest(number)) is not None:
                kept[number] = 1
        return kept

    def _bytes(self, kept: bytearray) -> int:
        return sum(self._index.span(n)[1] for n in range(self._index.count) if kept[n])

    # -- any other slot, as a stream -----------------------------------------------------------

    def stream(self) -> AssembledStream:
        """The plain payload as a stream of checked bytes, for a writer that reads one."""
        index = self._index
        found = self._find({index.digest(n) for n in range(index.count)})
        fetch = [n for n in range(index.count) if index.digest(n) not in found]
        self._plan(len(found), fetch, "found")
        return AssembledStream(self._pieces(found, fetch))

    def _pieces(self, found: dict[bytes, Found], fetch: list[int]) -> Iterator[bytes | memoryview]:
        index = self._index
        fetcher = self._fetcher(fetch)
        copies = array("q", (n for n in range(index.count) if index.digest(n) in found))
        copier = SeedCopier(index, copies, found)
        try:
            for number in range(index.count):
                data = self._local_or_fetched(number, found, fetcher, copier)
                self._report(self.tally)
                yield data
        finally:
            copier.close()
            fetcher.close()
            self._count_fetches([fetcher])

    # -- shared ----------------------------------------------------------------------------------

    def _find(self, wanted: set[bytes], use: Use | None = None) -> dict[bytes, Found]:
        if not wanted or not self._seeds:
            return {}
        return find_chunks(self._index, self._seeds, wanted, self._log, use)

    def _plan(self, found: int, fetch: list[int], how: str) -> None:
        index = self._index
        plain = sum(index.span(n)[1] for n in fetch)
        self._log(
            f"{_mib(index.length)} payload in {index.count} chunks: {found} distinct chunks "
            f"{how} on the device, {len(fetch)} to fetch ({_mib(plain)}, "
            f"{_mib(index.stored_bytes(fetch))} to download from {self._chunks.where})"
        )

    def _fetcher(self, fetch: list[int]) -> ChunkFetcher:
        """A fetcher of ``fetch``; a second one of the same install gets what is left of the
        time limit, which runs from the first (``deadline_s`` is the fetching's total)."""
        options = self._options
        now = time.monotonic()
        if self._fetch_deadline is None:
            self._fetch_deadline = now + options.deadline_s
        return ChunkFetcher(
            self._index,
            self._chunks,
            fetch,
            parallel=options.parallel,
            deadline_s=max(0.001, self._fetch_deadline - now),
            max_rate_bps=options.max_rate_bps,
        )

    def _local_or_fetched(
        self,
        number: int,
        found: dict[bytes, Found],
        fetcher: ChunkFetcher,
        copier: SeedCopier,
    ) -> bytes | memoryview:
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
            self.tally.fetched += entry.length
            return self._refetch(number, fetcher, place.seed.name)
        self.tally.copied += entry.length
        return data

    def _refetch(self, number: int, fetcher: ChunkFetcher, where: str) -> bytes:
        """Chunk ``number`` fetched now: its copy in ``where`` did not match its hash."""
        self._log(f"chunk {number} in {where} does not match its hash: fetching it instead")
        return fetcher.fetch_now(number)

    def _count_fetches(self, fetchers: list[ChunkFetcher]) -> None:
        self.tally.downloaded = sum(fetcher.tally.stored_bytes for fetcher in fetchers)
        self.tally.chunks_fetched = sum(fetcher.tally.chunks for fetcher in fetchers)
        refetched = sum(fetcher.tally.refetched for fetcher in fetchers)
        if refetched:
            self._log(f"{refetched} chunks did not match their hash and were fetched again")


class _Fetched:
    """The fetchers of one raw write, in turn, and the chunks asked of the newest one that are
    not written yet."""

    def __init__(
        self, start: Callable[[list[int]], ChunkFetcher], write: Callable[[int, bytes], None]
    ) -> None:
        self._start = start
        self._write = write
        self._fetchers: list[ChunkFetcher] = []
        self._coming: deque[int] = deque()

    @property
    def last(self) -> ChunkFetcher:
        """The newest fetcher (for a chunk fetched at once)."""
        return self._fetchers[-1]

    def ask(self, numbers: list[int]) -> None:
        """Fetch chunks ``numbers`` ahead, from a new fetcher: only once every chunk asked
        before is written (``write(wait=True)``), since each fetcher is taken in its order."""
        if self._coming:
            raise AssertionError("chunks asked before are not all written yet")
        if numbers or not self._fetchers:
            self._fetchers.append(self._start(numbers))
            self._coming.extend(numbers)

    def write(self, *, wait: bool) -> None:
        """Write the chunks fetched so far, in order; with ``wait``, all that were asked."""
        while self._coming and (wait or self.last.next_ready()):
            number = self._coming.popleft()
            self._write(number, self.last.take(number))

    def close(self) -> list[ChunkFetcher]:
        """Stop every fetcher; they are handed back for their tallies."""
        for fetcher in self._fetchers:
            fetcher.close()
        return self._fetchers


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
                patch.keep(entry.offset, entry.length)

    def put(self, numbers: list[int], data: bytes | memoryview, *, copied: bool) -> None:
        """Write ``data`` (checked) at the places of chunks ``numbers``, counted as copied from
        the device or fetched from the network."""
        for number in numbers:
            if self._done[number]:
                continue
            offset, length = self._index.span(number)
            self._patch.write_at(offset, data)
            self._done[number] = 1
            if copied:
                self._tally.copied += length
            else:
                self._tally.fetched += length
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

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        super().__init__()
        self._pieces = pieces
        self._buffer = memoryview(b"")

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Fill ``buffer`` with the next checked bytes, from as many chunks as it holds (so
        a file is written with as few calls as the full install's); 0 at the end."""
        done = 0
        with memoryview(buffer) as target, target.cast("B") as out:
            while done < len(out):
                if not self._buffer:
                    piece = next(self._pieces, None)
                    if piece is None:
                        break
                    self._buffer = memoryview(piece)
                count = min(len(out) - done, len(self._buffer))
                out[done : done + count] = self._buffer[:count]
                self._buffer = self._buffer[count:]
                done += count
        return done

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
