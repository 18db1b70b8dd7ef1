"""The seam between where update bytes come from and the engine that verifies and installs them.

A ``Source`` is one update's origin: an uploaded bundle file, a bundle at a LAN URL, or the newest
release on the update server. The engine opens it under its update lock and gets an
``Acquired``: a blocking byte stream and, when the source's own channel verified the release's
metadata already (the update server, through python-tuf), that ``SignedRelease``. A bundle's
metadata travels in its stream, and the engine verifies it there.

Invariants: a source does no verification the engine relies on except through
``SignedRelease`` (metadata verified against the device's trust, which ``DeviceView`` hands it);
payload bytes are always unverified, checked chunk by chunk by the engine. Every failure to get
bytes is an ``AcquireError``; metadata that does not verify is a ``VerificationError``. Sources
run in the engine's worker thread and may block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from sysupd.core.bundletrust import ReleasePolicy
from sysupd.core.manifest import Manifest
from sysupd.core.trustchain import TrustState
from sysupd.core.versions import Version
from sysupd.delta.fetch import ChunkSource, DeltaOptions

__all__ = [
    "Acquired",
    "ByteSource",
    "DeltaOffer",
    "DeviceView",
    "Log",
    "SignedRelease",
    "Source",
]

Log = Callable[[str], None]
"""A line for people, for the update's log."""


class ByteSource(Protocol):
    """Where payload bytes come from: anything with a blocking ``read(n)``."""

    def read(self, size: int, /) -> bytes:
        """Up to ``size`` bytes; ``b""`` only at the end."""
        ...


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What a source may know of the device: its trust, to verify its channel's metadata; its
    release policy and the booted slot's version, to choose a release."""

    load_trust: Callable[[], TrustState]
    """Read only by a source that verifies (a bundle's trust is checked after its header)."""
    policy: ReleasePolicy
    installed: Version

    @property
    def trust(self) -> TrustState:
        """The device's trust, read now.

        Raises:
            ConfigError: no trust root is configured, or it cannot be read.
            StateError: the persisted trust is unreadable.
        """
        return self.load_trust()


@dataclass(frozen=True, slots=True)
class SignedRelease:
    """A release whose metadata the source's channel verified against the device's trust."""

    manifest: Manifest
    chunk_list: bytes
    """The payload's chunk hashes, verified against their signed target entry."""
    root: bytes
    """The newest root the channel verified, to keep once the release is installed."""
    metadata: Mapping[str, bytes]
    """The verified timestamp, snapshot, ``targets`` and ``releases`` metadata, to keep."""
    index: bytes | None = None
    """The release's chunk index, verified against its signed target entry, when the source
    offers a delta download (``Acquired.delta``); else ``None``."""


@dataclass(frozen=True, slots=True)
class DeltaOffer:
    """A source's offer to fetch single chunks of the release instead of its whole payload."""

    chunks: ChunkSource
    options: DeltaOptions
    held_index: Callable[[Version], bytes | None] | None = None
    """The signed chunk index of another release of the product, by version, if the source
    still has it (verified against its signed entry; ``None``: it has none): the index of the
    release a slot holds tells where that slot's chunks lie without reading all of it.

    Raises:
        AcquireError, VerificationError: it could not be had, or not as signed.
    """


@dataclass(frozen=True, slots=True)
class Acquired:
    """An opened source: its bytes and, when verified already, the release they are."""

    stream: ByteSource
    origin: str
    """Where the bytes come from (a path or URL), recorded with the slot."""
    release: SignedRelease | None = None
    """``None``: the stream is a bundle, whose metadata the engine verifies."""
    delta: DeltaOffer | None = None
    """Set when the release's chunks can be fetched one by one (``release.index`` is then
    set): the engine then writes the slot from the device's own chunks and fetches only the
    rest, and opens ``stream`` only if it does not."""


class Source(Protocol):
    """Where one update comes from."""

    @property
    def label(self) -> str:
        """For people: "the uploaded file x.bundle (1.0 MiB)", "nas.lan (fetch_url)"."""
        ...

    @property
    def local(self) -> bool:
        """The bytes are on this machine already, so nothing is downloaded."""
        ...

    def open(self, device: DeviceView, log: Log) -> AbstractContextManager[Acquired]:
        """Open the source for reading (in the engine's worker thread, under its lock).

        Raises:
            AcquireError: the bytes cannot be had.
            VerificationError: the channel's metadata is not trusted.
        """
        ...
