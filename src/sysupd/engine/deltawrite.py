"""The engine's delta write: the inactive slot filled from the device's chunks and fetched ones.

Composes ``sysupd.delta`` for one install: checks the verified chunk index against the signed
manifest, opens the booted slot as a seed (read only), and writes the target slot — a raw slot in
place (``RawPatch``), any other through its writer as a stream of checked chunks.

Invariants: the index must describe the manifest's payload (a raw image's length and SHA-256
are both signed twice, and must agree); the booted slot is only ever opened for reading; a failed
raw write zeroes only the slot's start (``RawPatch.abort``), so the next attempt keeps the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from sysupd.core.chunkindex import MAX_INDEX_BYTES, ChunkIndex, parse_index
from sysupd.core.chunks import ChunkList
from sysupd.core.manifest import Manifest
from sysupd.core.versions import parse_version
from sysupd.delta.install import DeltaInstall, DeltaTally
from sysupd.delta.seeds import ImageSeed, Seed, TreeSeed
from sysupd.engine.slotset import SlotConfig
from sysupd.errors import AcquireError, InstallError, VerificationError
from sysupd.fsutil import atomic_write, read_capped
from sysupd.slots.base import PayloadSpec, SlotWriter
from sysupd.slots.directory import DirectorySlot
from sysupd.slots.raw import RawSlot
from sysupd.slots.rawpatch import RawPatch
from sysupd.sources.base import DeltaOffer, Log

__all__ = ["DeltaJob", "IndexCache", "Origins", "checked_index", "held_layout", "write_delta"]

Origins = Callable[[int, int, int], None]
"""Called with the payload bytes from the device, from the network, and bytes downloaded."""

_REPORT_BYTES = 1 << 20


def checked_index(manifest: Manifest, data: bytes) -> ChunkIndex:
    """The chunk index ``data`` (verified against its signed entry) for ``manifest``'s payload.

    Raises:
        VerificationError: it is malformed, or describes another payload.
    """
    index = parse_index(data)
    if manifest.payload == "raw" and (
        index.length != manifest.length or index.header.sha256 != manifest.sha256
    ):
        raise VerificationError(
            f"release {manifest.version}'s chunk index describes another image than its payload"
        )
    if manifest.payload == "tree" and index.length < manifest.installed_size:
        raise VerificationError(
            f"release {manifest.version}'s chunk index is shorter than the files it installs"
        )
    return index


class IndexCache:
    """The chunk index of the release each slot holds, kept after a delta install, so the next
    one finds that slot's chunks without reading all of it (``STATE/delta/<slot>.<version>.index``).

    Only a hint: every chunk copied from a slot is hashed when it is read, so a stale or damaged
    file costs time, never correctness; one that cannot be parsed is ignored.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def load(self, slot: str, version: str | None) -> ChunkIndex | None:
        """The kept index of ``slot`` holding ``version``, if there is one that parses."""
        if not version:
            return None
        try:
            return parse_index(read_capped(self._path(slot, version), MAX_INDEX_BYTES))
        except (OSError, VerificationError):
            return None

    def forget(self, slot: str) -> None:
        """``slot`` is about to be written: what it held is no more."""
        with suppress(OSError):
            for path in self._dir.glob(f"{slot}.*.index"):
                path.unlink()

    def keep(self, slot: str, version: str, data: bytes) -> None:
        """``slot`` now holds ``version``, whose verified index is ``data`` (best effort)."""
        with suppress(OSError):
            self._dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path(slot, version), data)

    def _path(self, slot: str, version: str) -> Path:
        return self._dir / f"{slot}.{version}.index"


def held_layout(
    cache: IndexCache, slot: str, version: str | None, offer: DeltaOffer, say: Log
) -> ChunkIndex | None:
    """The chunk index of release ``version``, which ``slot`` holds: the one kept, else the
    source's (kept then for the next update); ``None`` if neither has it, and the slot is cut.

    A device that got the release its slot holds some other way (the factory, an offline
    bundle, a full download) so reads that slot once instead of cutting and hashing it before
    it knows what is missing; the index is only a hint, as a kept one is.
    """
    layout = cache.load(slot, version)
    if layout is not None or not version or offer.held_index is None:
        return layout
    try:
        data = offer.held_index(parse_version(version))
        if data is None:
            return None
        layout = parse_index(data)
    except (AcquireError, VerificationError, ValueError) as exc:
        say(f"the chunk index of {version}, which slot {slot} holds, was not had ({exc})")
        return None
    say(
        f"the chunk index of {version}, which slot {slot} holds, came from the update server "
        f"({len(data)} bytes, verified)"
    )
    cache.keep(slot, version, data)
    return layout


@dataclass(frozen=True, slots=True)
class DeltaJob:
    """What one delta write needs to know."""

    manifest: Manifest
    index: ChunkIndex
    chunk_list: bytes
    """The release's signed chunk list (fixed-size blocks): a raw slot is read back by it."""
    offer: DeltaOffer
    target: SlotConfig
    booted: SlotConfig | None
    booted_layout: ChunkIndex | None = None
    """The index of the release the booted slot holds, if kept (``IndexCache``)."""
    target_layout: ChunkIndex | None = None
    """The index of the release the target slot held before this install, if kept."""


def write_delta(
    job: DeltaJob,
    writer: SlotWriter,
    say: Log,
    on_bytes: Callable[[int], None],
    origins: Origins,
) -> DeltaTally:
    """Write ``job``'s payload into ``writer``'s slot from the device's chunks and fetched ones.

    Raises:
        AcquireError, VerificationError, InstallError: as the delta install raises them.
    """
    seeds = _seeds(job, say)
    reported = [-_REPORT_BYTES]

    def report(tally: DeltaTally) -> None:
        if tally.done - reported[0] >= _REPORT_BYTES or tally.done == tally.total:
            reported[0] = tally.done
            on_bytes(tally.done)
            origins(tally.from_device, tally.fetched, tally.downloaded)

    if isinstance(writer, DirectorySlot):
        stashed = writer.stash()
        if stashed is not None:
            path, merged = stashed
            layout = None if merged else job.target_layout
            try:
                seeds.append(TreeSeed(f"slot {job.target.name} (what it held)", path, layout))
            except OSError as exc:
                say(f"what slot {job.target.name} held cannot be read as a seed ({exc})")
    install = DeltaInstall(job.index, job.offer.chunks, seeds, job.offer.options, say, report)
    try:
        if isinstance(writer, RawSlot):
            _write_raw(install, writer, job)
        else:
            stream = install.stream()
            with stream:
                writer.install(stream, _plain_spec(job.manifest, job.index))
    finally:
        for seed in seeds:
            seed.close()
    tally = install.tally
    if tally.done != job.index.length:
        raise InstallError(
            f"the delta install wrote {tally.done} of the payload's {job.index.length} bytes"
        )
    origins(tally.from_device, tally.fetched, tally.downloaded)
    return tally


def _write_raw(install: DeltaInstall, slot: RawSlot, job: DeltaJob) -> None:
    manifest = job.manifest
    patch = RawPatch(slot, ChunkList(job.chunk_list, manifest.chunk_size, manifest.length))
    try:
        install.write_raw(patch)
    except BaseException:
        patch.abort()
        raise
    finally:
        patch.close()


def _seeds(job: DeltaJob, say: Log) -> list[Seed]:
    """The booted slot as a seed of the payload's kind; none if it cannot be opened."""
    booted = job.booted
    if booted is None or booted.name == job.target.name:
        return []
    name = f"slot {booted.name} (booted)"
    layout = job.booted_layout
    try:
        if job.manifest.payload == "raw" and booted.kind == "raw":
            length = job.index.length
            if layout is not None:
                length = max(length, layout.length)
            return [ImageSeed(name, booted.path, length + length // 4, layout)]
        if job.manifest.payload == "tree" and booted.kind == "directory":
            return [TreeSeed(name, booted.path, layout)]
    except OSError as exc:
        say(f"{name} cannot be read as a seed ({exc}); its chunks are fetched instead")
    return []


def _plain_spec(manifest: Manifest, index: ChunkIndex) -> PayloadSpec:
    """The payload as the chunks make it: a tree's tar without its compression."""
    return PayloadSpec(
        kind=manifest.payload,
        compression="none",
        installed_size=manifest.installed_size,
        length=index.length,
        sha256=index.header.sha256,
        entries=manifest.entries,
    )
