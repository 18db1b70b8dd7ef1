"""The newest release on the update server (``sys/update_now {}``), through the online channel.

Opening refreshes the TUF metadata (python-tuf's ngclient, against the device's trust), picks the
newest release for the device's policy above its installed version, downloads and verifies the
chunk list and, when delta updates are on and the release has one, its chunk index; then it
offers the release's chunks one by one (``DeltaOffer``) and its whole payload as a stream that
connects only when first read. The release's metadata is verified here; the payload is not.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from sysupd.core.settings import Settings
from sysupd.core.versions import Version
from sysupd.delta.fetch import DeltaOptions, RateLimit
from sysupd.errors import AcquireError
from sysupd.sources.base import Acquired, DeltaOffer, DeviceView, Log, SignedRelease
from sysupd.sources.chunkstore import ServerChunks
from sysupd.sources.online import OnlineChannel, Survey
from sysupd.sources.tuf_fetcher import Download, FetcherLimits

__all__ = ["ServerSource"]


@dataclass(frozen=True, slots=True)
class ServerSource:
    """The update server at ``server``; ``cache_dir`` is ngclient's metadata cache, used by one
    channel at a time under ``cache_lock`` (shared with the update checks)."""

    server: str
    cache_dir: Path
    cache_lock: threading.Lock
    limits: FetcherLimits
    version: str = ""
    """The release the check found, for the label."""
    delta: DeltaOptions | None = None
    """How to fetch single chunks; ``None``: delta updates are off (setting ``delta_updates``)."""
    max_rate_bps: int = 0
    """The download rate cap of the whole payload (0: none)."""
    address: str | None = None
    """For a repository at a ``fetch_url``: the address its host was checked and resolved to,
    the only one connected to (``None``: resolve the update server's name)."""
    wanted: Version | None = None
    """Install this release rather than the newest (``sysupd install --version``)."""
    local: ClassVar[bool] = False
    """Downloaded: the job starts with the download phase."""

    @classmethod
    def configured(
        cls,
        server: str,
        state_dir: Path,
        cache_lock: threading.Lock,
        settings: Settings,
        limits: FetcherLimits,
        version: str = "",
        address: str | None = None,
    ) -> ServerSource:
        """The update server ``server`` as ``settings`` say to read it (delta updates, their
        parallel requests, the rate cap); ngclient's cache is ``state_dir/online``; ``address``
        pins where a ``fetch_url`` repository's host resolved."""
        delta = None
        if settings.delta_updates:
            delta = DeltaOptions(
                parallel=settings.delta_parallel,
                max_rate_bps=settings.download_max_rate_bps,
                deadline_s=limits.deadline_s,
            )
        return cls(
            server,
            state_dir / "online",
            cache_lock,
            limits,
            version,
            delta,
            settings.download_max_rate_bps,
            address,
        )

    @property
    def label(self) -> str:
        """The server's host and the release the check found."""
        found = f" (release {self.version})" if self.version else ""
        if self.address is not None:
            return f"the release repository at {urlsplit(self.server).netloc} (fetch_url){found}"
        return f"the update server {urlsplit(self.server).netloc}{found}"

    def survey(self, device: DeviceView) -> Survey:
        """What the server offers this device now (an update check): the newest acceptable
        release, and why newer ones are passed over.

        Raises:
            AcquireError, VerificationError, ConfigError, StateError: as ``open``.
        """
        with self._channel(device) as channel:
            return channel.newest(device.policy, device.installed, self.wanted)

    @contextlib.contextmanager
    def open(self, device: DeviceView, log: Log) -> Iterator[Acquired]:
        """The newest acceptable release, verified, and its payload's stream.

        Raises:
            AcquireError: the server cannot be read, or has no newer release any more.
            VerificationError: its metadata is not trusted.
            ConfigError, StateError: the device's trust cannot be read.
        """
        with self._channel(device) as channel:
            candidate = channel.newest(device.policy, device.installed, self.wanted).candidate
            if candidate is None:
                if self.wanted is not None:
                    raise AcquireError(
                        f"release {self.wanted} is not on the server, or not newer than the "
                        f"installed {device.installed}, or not for this device"
                    )
                raise AcquireError("no newer release is available any more")
            manifest = candidate.manifest
            log(
                f"release {manifest.version} from {urlsplit(self.server).netloc}: "
                f"{manifest.length} bytes, metadata verified"
            )
            chunks = channel.chunk_list(candidate)
            index = offer = None
            if self.delta is not None and manifest.index_target is not None:
                index = channel.delta_index(candidate)
                store = ServerChunks(channel.targets_url, self.limits, self.address)
                product = manifest.product
                offer = DeltaOffer(
                    store, self.delta, lambda version: channel.index_of(product, version)
                )
                log(f"the release has a chunk index ({len(index)} bytes, verified)")
            root, metadata = channel.trusted()
            directory, _, name = candidate.payload.path.rpartition("/")
            url = f"{channel.targets_url}{directory}/{manifest.sha256}.{name}"
            with _LazyPayload(
                lambda: channel.open_payload(candidate)[1], self.max_rate_bps
            ) as lazy:
                release = SignedRelease(manifest, chunks, root, metadata, index)
                yield Acquired(lazy, url, release, offer)

    @contextlib.contextmanager
    def _channel(self, device: DeviceView) -> Iterator[OnlineChannel]:
        """One conversation with the server; ngclient's cache is used by one at a time."""
        with self.cache_lock:
            connections = self.delta.parallel if self.delta is not None else 2
            channel = OnlineChannel(
                self.server, self.cache_dir, device.trust, self.limits, connections, self.address
            )
            try:
                yield channel
            finally:
                channel.close()


class _LazyPayload:
    """The payload's download, requested at the first read (a delta install never reads it),
    at most ``max_rate_bps`` (0: as fast as it comes); ``with`` closes it."""

    def __init__(self, open_download: Callable[[], Download], max_rate_bps: int) -> None:
        self._open = open_download
        self._download: Download | None = None
        self._rate = RateLimit(max_rate_bps)

    def read(self, size: int, /) -> bytes:
        """Up to ``size`` bytes of the payload.

        Raises:
            AcquireError: the download failed.
        """
        if self._download is None:
            self._download = self._open()
        data = self._download.read(size)
        self._rate.take(len(data))
        return data

    def __enter__(self) -> _LazyPayload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._download is not None:
            self._download.close()
